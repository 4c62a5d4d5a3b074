"""How the seen cache and the workspace disagree about one lineage (DESIGN §5,
reconciliation): the rules, and the report that counts them.

The workspace is the source of truth for what is live; the seen cache is what the filter
believes it is. ``classify`` compares the two views of one lineage at one instant and names the
disagreement, so ``reconcile`` can report it and ``--repair`` can act on each kind differently
(re-queue what is missing, rebuild what is stale or unknown, re-send a revocation).

**One lineage, one object.** A lineage revoked and published again has several objects in
the workspace (generation 0 revoked, generation 1 live, each under its own id, so in different
partitions of a read). The caller folds them with ``shared.core.workspace_objects.newer`` (or
``latest``) and passes the one with the highest generation: that is what Sentinel matches on.

Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from shared.core.fingerprint import SeenEntry
from shared.core.workspace_objects import WorkspaceObject

#: ``valid_until`` is compared at this tolerance: the cache keeps milliseconds, Log Analytics
#: may round differently, and a second is far below any expiration we set.
VALID_UNTIL_TOLERANCE: Final = timedelta(seconds=1)
#: Ids kept per kind for the human report; the counts are always complete.
DEFAULT_SAMPLE_SIZE: Final = 20


class Drift(StrEnum):
    """One kind of disagreement; each value is a report key and a metric label."""

    #: Both live and equal (fingerprint, generation, ``valid_until`` within 1 s).
    AGREEING = "agreeing"
    #: The cache says live; the workspace lacks it, or shows it deleted or expired, or shows
    #: only an older generation than the cache's. Re-queue it.
    MISSING = "missing"
    #: Both live, but fingerprint, generation or ``valid_until`` differ: the cache would skip
    #: (or refresh) on wrong grounds. Rebuild the entry from the workspace.
    STALE = "stale"
    #: Ours and live in the workspace, but absent or expired in the cache (a lost Redis): the
    #: next sync would upload it again. Rebuild the entry from the workspace.
    UNKNOWN = "unknown"
    #: One side revoked, the other live: a revocation that did not land, or one the cache
    #: never learnt of.
    REVOKED_MISMATCH = "revoked_mismatch"
    #: Would be a disagreement, but the lineage was uploaded within the grace window: Log
    #: Analytics ingests minutes late, so it is not yet a finding.
    IN_FLIGHT = "in_flight"


def classify(
    cached: SeenEntry | None,
    found: WorkspaceObject | None,
    *,
    recent: bool,
    now: datetime,
) -> Drift | None:
    """The drift between the cache's entry for a lineage and the workspace's latest object of
    it, at ``now``; ``None`` when there is nothing to say (neither side live, nothing to
    compare).

    ``recent`` says the lineage was uploaded within the grace window: every disagreement is
    then ``IN_FLIGHT`` instead (agreement stays ``AGREEING``).

    The rules, in order:

    - cache revoked, workspace live → ``REVOKED_MISMATCH`` (whatever the cache's expiry:
      revoked is revoked);
    - cache live, workspace absent, deleted or expired → ``MISSING``;
    - cache live, workspace revoked → ``REVOKED_MISMATCH``, unless the workspace's object is
      of an older generation than the cache's: then the cache's generation is simply not
      there, ``MISSING``;
    - cache absent or expired, workspace live → ``UNKNOWN``;
    - both live → ``STALE`` if fingerprint, generation or ``valid_until`` (beyond 1 s)
      differ, else ``AGREEING``;
    - neither live → ``None``.
    """
    verdict = _verdict(cached, found, now)
    if recent and verdict is not None and verdict is not Drift.AGREEING:
        return Drift.IN_FLIGHT
    return verdict


def _verdict(
    cached: SeenEntry | None, found: WorkspaceObject | None, now: datetime
) -> Drift | None:
    workspace_live = found is not None and found.live(now)
    if cached is not None and cached.revoked:
        return Drift.REVOKED_MISMATCH if workspace_live else None
    if cached is None or not cached.live(now):
        return Drift.UNKNOWN if workspace_live else None
    if found is None or found.deleted:
        return Drift.MISSING
    if found.revoked:
        older = found.generation is not None and found.generation < cached.generation
        return Drift.MISSING if older else Drift.REVOKED_MISMATCH
    if not workspace_live:  # expired in the workspace
        return Drift.MISSING
    return Drift.STALE if _differs(cached, found) else Drift.AGREEING


def _differs(cached: SeenEntry, found: WorkspaceObject) -> bool:
    if found.fingerprint != cached.fingerprint or found.generation != cached.generation:
        return True
    if found.valid_until is None:
        return True
    return abs(found.valid_until - cached.valid_until) > VALID_UNTIL_TOLERANCE


@dataclass
class DriftReport:
    """Counts per drift kind plus the first ``sample_size`` ids of each, for the human report
    (a workspace of millions cannot be listed; a few ids are enough to go and look).

    ``objects`` counts what was compared, ``unreadable`` the rows the reader could not parse,
    ``foreign`` the objects under our source system with no lineage of ours (never keyed,
    never repaired, but an operator should know they are there).
    """

    sample_size: int = DEFAULT_SAMPLE_SIZE
    counts: dict[Drift, int] = field(default_factory=dict)
    samples: dict[Drift, list[str]] = field(default_factory=dict)
    objects: int = 0
    unreadable: int = 0
    foreign: int = 0

    def add(self, drift: Drift | None, stix_id: str) -> None:
        """Count one compared lineage (``None``: compared, nothing to say)."""
        self.objects += 1
        if drift is None:
            return
        self.counts[drift] = self.counts.get(drift, 0) + 1
        sample = self.samples.setdefault(drift, [])
        if len(sample) < self.sample_size:
            sample.append(stix_id)

    def count(self, drift: Drift) -> int:
        return self.counts.get(drift, 0)

    @property
    def drifted(self) -> int:
        """Lineages that disagree now (neither agreeing nor in flight)."""
        return sum(n for d, n in self.counts.items() if d not in (Drift.AGREEING, Drift.IN_FLIGHT))

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: every kind present (zero when none), in declaration order."""
        return {
            "objects": self.objects,
            "unreadable": self.unreadable,
            "foreign": self.foreign,
            "drifted": self.drifted,
            "counts": {kind.value: self.count(kind) for kind in Drift},
            "samples": {kind.value: list(self.samples.get(kind, ())) for kind in Drift},
        }
