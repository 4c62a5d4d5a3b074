"""What one simulated Sentinel workspace holds, apart from the HTTP side: the objects it
accepted (``store``), the ``ThreatIntelIndicators`` and ``ThreatIntelObjects`` rows they made,
and when each row was ingested (specs/sentinel-and-entra.md §4).

``SentinelSimulator`` is one of these; the upload routes reach it only through ``_accept``.
The hooks (``republish``, ``delete``, ``overwrite``, ``seed``) are how tests make the workspace
change the ways it does without an upload: Sentinel's periodic republish, a delete in the
portal, a workspace that drifted from what the product believes it uploaded, or a workspace
already holding a few hundred thousand indicators.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from simulators.sentinel_rows import (
    IndicatorRows,
    collector_paused,
    indicator_row,
    iso_text,
    object_row,
    restamped,
)
from simulators.sentinel_store import ObjectStore

#: The sourcesystem the hooks (``overwrite``, ``seed``) store under when given none: the
#: product's own.
DEFAULT_SOURCE: Final = "Mandiant Threat Intelligence"


class SentinelWorkspace:
    """The tables and the store of one workspace, and the hooks that change them."""

    def __init__(self, workspace_id: str) -> None:
        self.workspace_id = workspace_id
        self.store = ObjectStore()
        self._indicators = IndicatorRows(workspace_id)
        self.object_rows: list[dict[str, Any]] = []
        #: When each of ``object_rows`` was ingested (POSIX seconds), in order.
        self._object_appended: list[float] = []
        self._uploads: defaultdict[str, int] = defaultdict(int)
        #: Every STIX id accepted with ``revoked: true``; none ever leaves it.
        self.revoked: set[str] = set()
        #: The sourcesystem each stored object came from (``store`` keeps objects verbatim).
        self._sources: dict[str, str] = {}
        self._last_generated: datetime | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The ``ThreatIntelIndicators`` rows, oldest first (append-only, like the table).

        A row is rendered the first time anyone reads ``rows``, not when its object is
        accepted: rendering (timestamps normalised, the observable split out of the pattern,
        the row id) costs more than validating the object, and a benchmark that only counts
        ``store`` never reads a row. The ingestion time is taken at acceptance, so a row reads
        the same whenever it is rendered; once rendered it is an ordinary dict in an ordinary
        list, which callers may read or change as before.
        """
        self._indicators.workspace_id = self.workspace_id
        return self._indicators.rows

    def rows_ingested_by(self, cutoff: float | None) -> list[dict[str, Any]]:
        """The ``rows`` ingested at or before ``cutoff`` (POSIX seconds; ``None``: all), in a
        list of their own: what a query sees under an ingestion delay."""
        self._indicators.workspace_id = self.workspace_id
        return self._indicators.visible(cutoff)

    def object_rows_ingested_by(self, cutoff: float | None) -> list[dict[str, Any]]:
        """``object_rows`` ingested at or before ``cutoff``, as ``rows_ingested_by``."""
        rows = self.object_rows
        if cutoff is None:
            return list(rows)
        stamps = self._object_appended
        seen = [row for row, at in zip(rows, stamps, strict=False) if at <= cutoff]
        return seen + rows[len(stamps) :]

    def uploads_for(self, stix_id: str) -> int:
        """How many times ``stix_id`` was accepted (each acceptance added a row)."""
        return self._uploads.get(stix_id, 0)

    # -- hooks: what happens to a workspace besides uploads -----------------------------------

    def republish(self, now: datetime | None = None) -> int:
        """Sentinel's periodic republish (every 7 to 10 days, §4.2): one more row, with
        ``LastUpdateMethod = "LogARepublisher"``, for every stored indicator not expired at
        ``now`` (an aware datetime; default: the ingestion clock's next instant), revoked ones
        included. Each row
        is its object's newest row again, ``TimeGenerated`` and ``IsActive`` as of ``now``.
        Returns how many rows were appended."""
        generated = self._generated_at(now)
        horizon = iso_text(generated)
        added: list[tuple[dict[str, Any], datetime]] = []
        with collector_paused():
            newest = self._indicators.latest() if self.store else {}
            for stix_id in self.store:
                row = newest.get(stix_id)
                if row is None:  # no row yet (an indicator), or not an indicator at all
                    obj = self.store[stix_id]
                    if obj.get("type") != "indicator":
                        continue
                    source = self._sources[stix_id]
                    row = indicator_row(obj, source, "", generated, self.workspace_id)
                valid_until = row.get("ValidUntil")
                if valid_until and str(valid_until) <= horizon:
                    continue
                added.append((restamped(row, generated, "LogARepublisher"), generated))
            self._indicators.extend(added)
        return len(added)

    def delete(self, stix_id: str, now: datetime | None = None) -> None:
        """Delete ``stix_id`` as the portal or the management API would (§2.5): gone from
        ``store``, and one more row saying so at ``now`` (an aware datetime; default: the
        ingestion clock's next instant) with ``IsDeleted`` true, ``IsActive`` false and
        ``LastUpdateMethod`` "ManagementApi" (our choice: the documentation names none).
        ``KeyError`` when nothing is stored under it."""
        obj = self.store[stix_id]
        source = self._sources.pop(stix_id)
        del self.store[stix_id]
        generated = self._generated_at(now)
        if obj.get("type") == "indicator":
            row = indicator_row(obj, source, "ManagementApi", generated, self.workspace_id)
            self._indicators.append({**row, "IsDeleted": True, "IsActive": False}, generated)
        else:
            row = object_row(obj, source, generated, self.workspace_id)
            deleted = {**row, "IsDeleted": True, "LastUpdateMethod": "ManagementApi"}
            self._add_object_row(deleted, generated)

    def overwrite(self, obj: dict[str, Any], source: str | None = None) -> None:
        """Store ``obj`` and append its row exactly as an accepted upload would, without the
        HTTP path, its validation, its quota or the rule that revocation is final: how a test
        makes the workspace disagree with what the product believes it uploaded. ``source``
        defaults to the one ``obj``'s id was stored under, else ``DEFAULT_SOURCE``."""
        self._accept(obj, source or self._sources.get(obj["id"], DEFAULT_SOURCE))

    def seed(self, objects: Iterable[dict[str, Any]], source: str | None = None) -> int:
        """``overwrite`` for many objects at once (300 000 in a few seconds: rows are rendered
        on first read, and nothing is validated). Returns how many were stored."""
        count = 0
        with collector_paused():
            for obj in objects:
                self._accept(obj, source or self._sources.get(obj["id"], DEFAULT_SOURCE))
                count += 1
        return count

    def clear_tables(self) -> None:
        """Forget every object and row."""
        self.store.clear()
        self._indicators.clear()
        self.object_rows.clear()
        self._object_appended.clear()
        self._uploads.clear()
        self.revoked.clear()
        self._sources.clear()

    # -- what an accepted upload does ------------------------------------------------------------

    def _accept(self, obj: dict[str, Any], source: str) -> None:
        stix_id = obj["id"]
        located = self.store.put_blob(stix_id, orjson.dumps(obj))
        self._sources[stix_id] = source
        self._uploads[stix_id] += 1
        if obj.get("revoked") is True:
            self.revoked.add(stix_id)
        if obj["type"] == "indicator":
            self._indicators.add(located, source, "UploadApi", self._generated_now())
        else:
            generated = self._generated_now()
            self._add_object_row(object_row(obj, source, generated, self.workspace_id), generated)

    def _add_object_row(self, row: dict[str, Any], generated: datetime) -> None:
        self.object_rows.append(row)
        self._object_appended.append(generated.timestamp())

    def _generated_at(self, now: datetime | None) -> datetime:
        """``now`` (later ingestion times stay after it), else the clock's next instant."""
        if now is None:
            return self._generated_now()
        if self._last_generated is None or now > self._last_generated:
            self._last_generated = now
        return now

    def _generated_now(self) -> datetime:
        """Ingestion time, strictly increasing so ``arg_max(TimeGenerated, *)`` is decisive."""
        now = datetime.now(UTC)
        if self._last_generated is not None and now <= self._last_generated:
            now = self._last_generated + timedelta(microseconds=1)
        self._last_generated = now
        return now
