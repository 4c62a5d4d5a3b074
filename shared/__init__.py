"""The library the three services share: settings, the pure core, adapters and telemetry.

The pure core (``indicator``, ``parsing``, ``filters``, ``fingerprint``, ``stix``, ``settings``)
imports no I/O module, so it can be tested exhaustively without a server.
"""
