"""The uploader service: upload-queue batches to Sentinel, within one quota shared by every
replica of a destination, settling each message only after Sentinel answered for its record
(DESIGN.md §2, §4). ``worker`` holds the loop, ``batching`` what each message needs, ``main``
the wiring."""
