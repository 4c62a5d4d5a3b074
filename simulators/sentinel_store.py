"""Where the Sentinel simulator keeps the STIX objects it accepted, apart from the server:
how 300 000 of them are kept decides what every later upload costs (``ObjectStore``)."""

from __future__ import annotations

from collections.abc import Iterator, KeysView, MutableMapping
from typing import Any

import orjson

#: Where an object's JSON lies: (an ``ObjectStore``'s buffer, ``offset << 32 | length``).
Located = tuple[bytearray, int]


class ObjectStore(MutableMapping[str, dict[str, Any]]):
    """STIX id -> the object as last accepted, like a ``dict``; kept serialized.

    A benchmark stores up to 300 000 objects. Kept as parsed dicts (a dozen containers
    each) they made every later request pay for the garbage collector walking all of them,
    more the more were stored, and that was most of the upload handler's CPU. Here each
    object is its JSON, appended to one growing buffer: nothing for the collector to walk,
    about 1 KB an object, and no allocation per object that outlives its request. A read
    decodes a fresh dict equal to what was uploaded: changing it does not change the store
    (assign it back for that). Replaced and deleted objects keep their bytes until ``clear``.
    """

    __slots__ = ("_arena", "_at")

    def __init__(self) -> None:
        self._arena = bytearray()
        #: id -> where its JSON is: ``offset << 32 | length`` (one int, nothing to walk).
        self._at: dict[str, int] = {}

    def __getitem__(self, key: str) -> dict[str, Any]:
        return decode_located(self._arena, self._at[key])

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self.put_blob(key, orjson.dumps(value))

    def __delitem__(self, key: str) -> None:
        del self._at[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def __repr__(self) -> str:
        return f"ObjectStore({dict(self)!r})"

    def keys(self) -> KeysView[str]:
        return self._at.keys()

    def clear(self) -> None:
        self._at.clear()
        self._arena = bytearray()  # rows not rendered yet keep the old one alive

    def put_blob(self, key: str, blob: bytes) -> Located:
        """Store an object already serialized (``orjson.dumps`` of a JSON object); returns
        where it is, which stays valid even after the id is replaced or the store cleared."""
        arena = self._arena
        where = len(arena) << 32 | len(blob)
        arena += blob
        self._at[key] = where
        return arena, where

    def locate(self, key: str) -> Located:
        return self._arena, self._at[key]


def decode_located(arena: bytearray, where: int) -> dict[str, Any]:
    start = where >> 32
    obj: dict[str, Any] = orjson.loads(arena[start : start + (where & 0xFFFFFFFF)])
    return obj
