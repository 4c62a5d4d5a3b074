"""The records the MATI simulator breaks on purpose (``inject_bad_records``, the
``PARTIAL_ERRORS`` fault): each kind a way a real page was seen to carry a bad record, so the
product's parser must count and dead-letter it while keeping the rest of the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

#: How bad records are broken, in the order positions of a fault take them.
BAD_RECORD_KINDS = (
    "missing_id",
    "missing_value",
    "mscore_not_int",
    "value_not_string",
    "sources_not_list",
    "bad_last_updated",
    "duplicate_key",
)


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record the simulator deliberately broke, for tests to assert the product skipped it."""

    page: int
    position: int
    id: str
    kind: str


def corrupt(record: dict[str, Any], kind: str) -> bytes:
    """One record broken the way ``kind`` says, serialized (a duplicate key needs raw bytes)."""
    broken = dict(record)
    if kind == "missing_id":
        del broken["id"]
    elif kind == "missing_value":
        del broken["value"]
    elif kind == "mscore_not_int":
        broken["mscore"] = "high"
    elif kind == "value_not_string":
        broken["value"] = 12345
    elif kind == "sources_not_list":
        broken["sources"] = "Mandiant"
    elif kind == "bad_last_updated":
        broken["last_updated"] = "yesterday"
    elif kind == "duplicate_key":
        # A real detail response carried a key twice (§3.5). Here the second copy is invalid:
        # last-wins parsers see a null value, strict parsers reject the record; either way
        # the record must be skipped, and the rest of the page kept.
        return orjson.dumps(broken)[:-1] + b',"value":null}'
    else:
        raise ValueError(kind)
    return orjson.dumps(broken)
