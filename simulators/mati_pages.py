"""The records of a MATI page, serialized: most of the simulator's work while a sync runs.

Blocks the query leaves out are never built (``Feed.record(omit=...)``), and a page is one
``orjson.dumps``. For benchmarks, ``prerender`` keeps each record's bytes for one query's flags
until the record changes, so that query's pages are joined, not built: the simulator shares the
machine with the pipeline it serves, and the real MATI does this work on its own servers.
"""

from __future__ import annotations

from array import array
from typing import Any

import orjson

from simulators.feed import Feed
from simulators.mati_query import cap_reports


class PageRenderer:
    """Renders pages of ``feed``'s records, as a scroll pinned them (indexes, generation)."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        #: (blocks left out, report limit) -> index -> (record version, rendered bytes); only
        #: for the queries ``prerender`` was asked to serve.
        self._rendered: dict[tuple[frozenset[str], int], dict[int, tuple[int, bytes]]] = {}

    def prerender(self, omit: frozenset[str], report_limit: int) -> int:
        """Render every record without the blocks in ``omit`` and keep its bytes until it
        changes; returns how many records were rendered."""
        rendered = self._rendered.setdefault((omit, report_limit), {})
        for i in range(len(self.feed)):
            rendered[i] = self._rendition(i, None, omit, report_limit)
        return len(rendered)

    def page(
        self, indexes: array[int], generation: int, omit: frozenset[str], report_limit: int
    ) -> bytes:
        """The records at ``indexes`` as they were at ``generation``, as one JSON array."""
        rendered = self._rendered.get((omit, report_limit))
        if rendered is not None:
            return self._join(rendered, indexes, generation, omit, report_limit)
        return orjson.dumps(self.records(indexes, generation, omit, report_limit))

    def records(
        self, indexes: array[int], generation: int, omit: frozenset[str], report_limit: int
    ) -> list[dict[str, Any]]:
        """The same records, not serialized (for a page that is assembled record by record)."""
        record = self.feed.record
        records = [record(i, generation=generation, omit=omit) for i in indexes]
        if "reports" not in omit:
            for r in records:
                cap_reports(r, report_limit)
        return records

    def _rendition(
        self, i: int, generation: int | None, omit: frozenset[str], report_limit: int
    ) -> tuple[int, bytes]:
        record = self.feed.record(i, generation=generation, omit=omit)
        cap_reports(record, report_limit)
        return self.feed.version_of(i, generation), orjson.dumps(record)

    def _join(
        self,
        rendered: dict[int, tuple[int, bytes]],
        indexes: array[int],
        generation: int,
        omit: frozenset[str],
        report_limit: int,
    ) -> bytes:
        """The page from kept renditions; a record changed since is rendered again."""
        version_of = self.feed.version_of
        parts = []
        for i in indexes:
            kept = rendered.get(i)
            if kept is None or kept[0] != version_of(i, generation):
                kept = rendered[i] = self._rendition(i, generation, omit, report_limit)
            parts.append(kept[1])
        return b"[" + b",".join(parts) + b"]"
