"""The uploader service: upload-queue batches to Sentinel, within one quota shared by every
replica of a destination, settling each message only after Sentinel answered for its record
(DESIGN.md §2, §4). ``worker`` holds the loop, ``batching`` what each message needs,
``request`` one request repeated until Sentinel answers, ``settling`` what the answer does to
the batch, ``waiting`` the lock-safe waits, ``circuit`` the destination's circuit, ``config``
what the settings decide, ``reasons`` the dead-letter reasons, ``main`` the wiring."""
