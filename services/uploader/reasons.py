"""The uploader's dead-letter reasons, each also counted as ``dead_lettered_<reason>``.

A module of its own because others read them: ``mati2sentinel explain`` tells a record Sentinel
refused from one the uploader could not read by these very values, and must not drift from
what the uploader writes.
"""

from __future__ import annotations

from typing import Final

#: An upload message that is not the contract's shape (``shared.contract.messages``).
MALFORMED_MESSAGE: Final = "malformed_message"
#: A record Sentinel refused; the dead letter's description is Sentinel's message.
REJECTED_BY_SENTINEL: Final = "rejected_by_sentinel"
