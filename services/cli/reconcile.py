"""``mati2sentinel reconcile [--json] [--repair]``: prove the workspace holds what the seen cache
believes, and fix it where it does not (DESIGN §5 "Reconciliation", issue 15).

The workspace is read through Log Analytics (``shared.adapters.workspace_reader``), the seen
cache by ``SCAN`` (``WorkspaceState.seen_entries``), and every lineage is judged by
``shared.core.drift.classify``. Only the workspace side is held in memory (an index by lineage,
about 700 bytes a lineage, measured); the cache streams past it.

``--repair`` makes the cache say what the workspace holds, lineage by lineage, and then lets
the pipeline decide again from MATI's current record, the one path every upload takes:

- missing: the entry goes (or, for a later generation, stays as "not live", so the lineage is
  published again under that id); the record is handed to the filter, which uploads it if it
  still passes;
- stale and revoked mismatches: the entry becomes the workspace's object; the filter re-judges
  the record against it (a changed fingerprint is uploaded, a failing record revoked);
- unknown: the entry is rebuilt from the workspace; the record is re-judged too, so an object
  that no longer passes is revoked, within ``--max-lookups`` (MATI is asked once per record;
  past the limit the entries are only rebuilt and a full sync re-judges them).
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import orjson

from services.cli.lookup import find
from services.cli.query import Query
from shared.adapters.destination_state import compact_id
from shared.adapters.mati_client import MatiClient
from shared.adapters.workspace_reader import ReadProgress, WorkspaceReader
from shared.adapters.workspace_state import WorkspaceState
from shared.contract.bus import Bus
from shared.contract.messages import INDICATORS, raw_message
from shared.core.drift import Drift, DriftReport, classify
from shared.core.events import get_logger
from shared.core.fingerprint import SeenEntry
from shared.core.settings import Settings
from shared.core.workspace_objects import WorkspaceObject, newer

log = get_logger(__name__)

#: Records handed to the filter per publish.
PUBLISH_CHUNK: Final = 100
#: ``--max-lookups``' default: MATI is asked once per record to re-judge (1 a second by
#: default), so a lost cache's hundreds of thousands are left to a full sync.
MAX_LOOKUPS: Final = 1000
_REPAIRED: Final = frozenset({Drift.MISSING, Drift.STALE, Drift.UNKNOWN, Drift.REVOKED_MISMATCH})


@dataclass
class Repair:
    """What ``--repair`` did, by action."""

    #: Records handed to the filter again.
    requeued: int = 0
    #: Seen entries set to the workspace's view.
    rebuilt: int = 0
    #: Seen entries dropped (the workspace holds nothing of the lineage).
    forgotten: int = 0
    #: Lineages MATI no longer knows, or the workspace no longer names the record of: they
    #: stay as the workspace has them and expire there.
    unresolved: int = 0
    #: Unknown objects past ``--max-lookups``: rebuilt, not re-judged.
    not_rejudged: int = 0


@dataclass
class Outcome:
    destination: str
    at: datetime
    grace_minutes: float
    report: DriftReport
    seconds: float = 0.0
    partitions: int = 0
    streak: int = 0
    repair: Repair | None = None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "destination": self.destination,
            "at": self.at.isoformat(),
            "grace_minutes": self.grace_minutes,
            "partitions": self.partitions,
            "seconds": round(self.seconds, 1),
            "streak": self.streak,
            **self.report.to_json(),
            "repair": None if self.repair is None else dataclasses.asdict(self.repair),
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)


@dataclass
class _Drifted:
    kind: Drift
    compact: str
    cached: SeenEntry | None
    found: WorkspaceObject | None


@dataclass
class Reconciler:
    settings: Settings
    state: WorkspaceState
    reader: WorkspaceReader
    now: datetime
    progress: Callable[[ReadProgress], None] | None = None
    _drifted: list[_Drifted] = field(default_factory=list)

    async def compare(self) -> Outcome:
        started = time.monotonic()
        grace = self.settings.reconcile_grace_minutes
        report = DriftReport()
        index: dict[str, WorkspaceObject] = {}
        steps: list[ReadProgress] = []

        def progress(step: ReadProgress) -> None:
            steps[:] = [step]
            if self.progress is not None:
                self.progress(step)

        async for found in self.reader.read(progress=progress):
            if found.lineage is None:
                report.foreign += 1
                continue
            key = compact_id(found.lineage)
            index[key] = newer(index.get(key), found)
        report.unreadable = self.reader.unreadable
        recent = await self.state.recent_ids(self.now - timedelta(minutes=grace))
        async for step in self.state.seen_entries():
            for compact, cached in step:
                match = index.pop(compact) if compact in index else None
                self._judge(report, compact, cached, match, recent)
        for compact, rest in index.items():
            self._judge(report, compact, None, rest, recent)
        outcome = Outcome(self.settings.destination, self.now, grace, report)
        outcome.partitions = steps[0].partitions_total if steps else 0
        outcome.seconds = time.monotonic() - started
        return outcome

    def _judge(
        self,
        report: DriftReport,
        compact: str,
        cached: SeenEntry | None,
        found: WorkspaceObject | None,
        recent: set[str],
    ) -> None:
        kind = classify(cached, found, recent=compact in recent, now=self.now)
        report.add(kind, found.stix_id if found is not None else compact)
        if kind in _REPAIRED:
            assert kind is not None
            self._drifted.append(_Drifted(kind, compact, cached, found))

    async def save(self, outcome: Outcome) -> None:
        counts = {kind.value: outcome.report.count(kind) for kind in Drift}
        extra = {
            "objects": str(outcome.report.objects),
            "drifted": str(outcome.report.drifted),
            "mode": "repair" if outcome.repair is not None else "report",
        }
        outcome.streak = await self.state.save_reconcile(
            counts, at=self.now, drift=outcome.report.drifted > 0, extra=extra
        )

    async def repair(self, *, bus: Bus, mati: MatiClient, max_lookups: int = MAX_LOOKUPS) -> Repair:
        done = Repair()
        entries: list[tuple[str, SeenEntry]] = []
        forget: list[str] = []
        records: list[dict[str, Any]] = []
        lookups = 0
        for drifted in self._drifted:
            found = drifted.found
            if found is None or found.lineage is None:
                forget.append(drifted.compact)
                done.unresolved += 1
                continue
            entry = _workspace_view(found, drifted.cached, self.now)
            if entry is None:
                forget.append(drifted.compact)
            else:
                entries.append((found.lineage, entry))
            if drifted.kind is Drift.UNKNOWN and lookups >= max_lookups:
                done.not_rejudged += 1
                continue
            lookups += 1
            record = await self._record(found.mati_id, mati)
            if record is None:
                done.unresolved += 1
            else:
                records.append(record)
        done.forgotten = await self.state.forget(forget)
        for start in range(0, len(entries), 500):
            done.rebuilt += await self.state.restore(
                entries[start : start + 500], now=self.now, overwrite=True
            )
        run_id = f"reconcile-{secrets.token_hex(6)}"
        for start in range(0, len(records), PUBLISH_CHUNK):
            chunk = records[start : start + PUBLISH_CHUNK]
            await bus.publish(INDICATORS, [raw_message(r, run_id=run_id, full=True) for r in chunk])
            done.requeued += len(chunk)
        log.info("reconcile.repaired", **dataclasses.asdict(done))
        return done

    async def _record(self, mati_id: str | None, mati: MatiClient) -> dict[str, Any] | None:
        if not mati_id:
            return None
        return await find(Query(mati_id, indicator_id=mati_id), mati, self.settings)


def _workspace_view(
    found: WorkspaceObject, cached: SeenEntry | None, now: datetime
) -> SeenEntry | None:
    """The entry that says what the workspace holds of ``found``'s lineage, or ``None`` for
    "nothing". A deleted or expired object of a later generation is kept as "not live" at
    that generation, so the filter publishes the lineage again under that id, never under a
    revoked earlier one."""
    entry = found.seen_entry()
    if entry is not None and (found.live(now) or entry.revoked):
        return entry
    generation = found.generation or 0
    if generation == 0:
        return None
    fingerprint = found.fingerprint or (cached.fingerprint if cached else None)
    if fingerprint is None:
        return None
    return SeenEntry(fingerprint, now - timedelta(milliseconds=1), b"", False, generation)


# ---- output --------------------------------------------------------------------------------


def progress_line(step: ReadProgress) -> None:
    """Progress on stderr, so ``--json`` output stays one document."""
    print(
        f"reading the workspace: partition {step.partitions_done}/{step.partitions_total}, "
        f"{step.objects_read:,} of about {step.objects_expected:,} objects",
        file=sys.stderr,
    )


_WHY: Final = {
    Drift.AGREEING: "in both, the same",
    Drift.MISSING: "the cache says live; the workspace lacks it, or has it deleted or expired",
    Drift.STALE: "both live, but valid_until or content differ",
    Drift.UNKNOWN: "ours and live in the workspace, unknown to the cache",
    Drift.REVOKED_MISMATCH: "revoked on one side, live on the other",
    Drift.IN_FLIGHT: "would differ, but uploaded within the grace (ingestion lags)",
}


def render(outcome: Outcome) -> str:
    report = outcome.report
    lines = [
        f"reconcile of destination {outcome.destination}: {report.objects:,} lineage(s) compared "
        f"({outcome.partitions} partition(s), {outcome.seconds:.1f} s; grace "
        f"{outcome.grace_minutes:g} min)"
    ]
    for kind in Drift:
        count = report.count(kind)
        sample = report.samples.get(kind, [])[:3] if kind is not Drift.AGREEING else []
        shown = f"  e.g. {', '.join(sample)}" if sample else ""
        lines.append(f"  {kind.value:<17}{count:>10,}  {_WHY[kind]}{shown}")
    if report.unreadable or report.foreign:
        lines.append(
            f"  ({report.unreadable} unreadable row(s), {report.foreign} object(s) under our "
            "source system that we did not mint)"
        )
    if outcome.repair is not None:
        r = outcome.repair
        lines.append(
            f"repaired: seen entries set to the workspace's view {r.rebuilt}, forgotten "
            f"{r.forgotten}; records handed to the filter again {r.requeued}"
        )
        if r.unresolved:
            lines.append(
                f"  {r.unresolved} lineage(s) could not be re-judged (MATI no longer knows "
                "them, or the workspace keeps no row of them): they expire as they are"
            )
        if r.not_rejudged:
            lines.append(
                f"  {r.not_rejudged} unknown object(s) rebuilt without asking MATI "
                "(--max-lookups): run `mati2sentinel sync --once --full` to re-judge them"
            )
    elif report.drifted:
        lines.append(
            f"drift: {report.drifted:,} lineage(s) (reconciles in a row with drift: "
            f"{outcome.streak}); `mati2sentinel reconcile --repair` fixes it"
        )
    else:
        lines.append("no drift")
    return "\n".join(lines)
