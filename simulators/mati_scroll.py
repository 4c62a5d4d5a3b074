"""The scrolls behind MATI's ``next`` cursors (specs/mati-api-v4.md §3.2).

The first request of a query pins the matching indexes and the feed's generation, like an
Elasticsearch scroll, so a sync never sees a page shift under it while the feed changes. A
cursor is ``<base64 scroll id>.<base64 JSON state>``: the state (page size, page number) rides
in the cursor, so replaying one returns the same page, which makes a client's retry after a
5xx safe; only the scroll id is kept here, until it expires.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from array import array
from dataclasses import dataclass
from typing import Any

import orjson

from simulators.mati_query import MAX_LIMIT, BadRequest

#: Random bytes in a cursor's scroll-id part: 2401 bytes -> 3204 base64 chars with ``==``
#: padding, so a client must handle both the length and the ``%3D`` encoding (§3.2).
_SCROLL_ID_BYTES = 2401


@dataclass(slots=True)
class Scroll:
    """A pinned query result: ordered feed indexes, the feed generation, the original flags."""

    indexes: array[int]
    generation: int
    include: dict[str, bool]
    report_limit: int


@dataclass(slots=True)
class _Cursor:
    scroll: Scroll
    issued_at: float


class Cursors:
    """The cursors issued and not yet expired, by scroll id."""

    def __init__(self) -> None:
        self._open: dict[str, _Cursor] = {}

    def __len__(self) -> int:
        return len(self._open)

    def issue(self, scroll: Scroll, state: dict[str, Any], now: float) -> str:
        scroll_id = base64.b64encode(secrets.token_bytes(_SCROLL_ID_BYTES)).decode()
        self._open[scroll_id] = _Cursor(scroll, now)
        return f"{scroll_id}.{base64.b64encode(orjson.dumps(state)).decode()}"

    def resolve(self, cursor: str) -> tuple[Scroll, dict[str, Any]]:
        """The scroll a cursor continues and the state it carries; ``BadRequest`` when the
        cursor is malformed, or its scroll unknown or expired."""
        scroll_id, dot, encoded = cursor.rpartition(".")
        if not dot:
            raise BadRequest("Malformed next token.", "invalid_cursor")
        try:
            state = orjson.loads(base64.b64decode(encoded, validate=True))
            valid = int(state["next_page_index"]) >= 0 and 1 <= int(state["limit"]) <= MAX_LIMIT
        except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BadRequest("Malformed next token.", "invalid_cursor") from exc
        if not valid:
            raise BadRequest("Malformed next token.", "invalid_cursor")
        entry = self._open.get(scroll_id)
        if entry is None:
            raise BadRequest(
                "The next token is invalid or has expired; start a new query.", "invalid_cursor"
            )
        return entry.scroll, state

    def expire(self, issued_until: float) -> None:
        """Forget every cursor issued at or before ``issued_until``."""
        for key in [k for k, c in self._open.items() if c.issued_at <= issued_until]:
            del self._open[key]

    def clear(self) -> None:
        self._open.clear()
