"""What the services say to each other: the bus port (``Bus``, ``Message``, ``Delivery``) and
the message contract (entities, bodies, schemas, dead-letter reasons). Imports the core only."""
