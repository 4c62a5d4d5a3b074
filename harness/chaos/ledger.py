"""Upload accounting for the chaos run, and the duplicate bound it must meet: every object
version is uploaded at most once more than the disruptions that caught it in flight.

A *version* is one STIX id with one fingerprint (a revocation has a fingerprint of its own).
The ledger hears of every object Sentinel stored, with the request that carried it: when
that request arrived, its serial, and the client port it came from. A *disruption* is what
may legitimately make a version go out again, over a span of time and a scope:

- a killed uploader: the instant it died, scoped to the client ports its connections held
  (only what it had in flight is caught);
- a killed filter: from its death until the raw messages it held came back (their lock ran
  out), scoped to their indicators: a redelivered message takes over its claim, since its
  forward may have failed, and forwards again what may already be queued;
- a killed Redis: from the kill until Redis answered again, for every upload (an answer
  Sentinel gave meanwhile could not be committed);
- a revoked token: the instant it was revoked, for every upload;
- a stall or reset of an upload's answer after Sentinel stored it: that one request.

A disruption *hits* a version when it falls between one of its uploads (from that upload's
arrival) and the next upload of the same version, in that upload's scope. The bound is
``uploads(version) <= 1 + hits(version)``; a version over it is a duplicate nothing explains.
Pure: the tests build ledgers by hand.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

#: (STIX id, fingerprint): one version of one object.
Version = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Upload:
    """One stored copy of a version: its request's arrival (monotonic seconds), serial,
    client port (None when unknown) and the object's MATI id."""

    at: float
    serial: int
    port: int | None
    mati_id: str = ""


class DisruptionKind(StrEnum):
    UPLOADER_KILL = "uploader_kill"
    FILTER_KILL = "filter_kill"
    REDIS_KILL = "redis_kill"
    ACCESS_REVOKED = "token_revoked"
    ANSWER_LOST = "answer_lost_after_store"


@dataclass(frozen=True, slots=True)
class Disruption:
    """``kind`` over ``[start, end]``; it reaches the uploads from ``ports`` (when given), of
    request ``serial`` (when given), of the MATI ids in ``indicators`` (when given), else
    every upload."""

    kind: DisruptionKind
    start: float
    end: float
    ports: frozenset[int] | None = None
    serial: int | None = None
    indicators: frozenset[str] | None = None

    def reaches(self, upload: Upload) -> bool:
        if self.serial is not None:
            return upload.serial == self.serial
        if self.ports is not None:
            return upload.port is not None and upload.port in self.ports
        if self.indicators is not None:
            return upload.mati_id in self.indicators
        return True


@dataclass(frozen=True)
class Excess:
    """A version uploaded more often than its bound allows."""

    version: Version
    uploads: int
    hits: int


@dataclass(frozen=True)
class Verdict:
    versions: int
    uploads: int
    #: Uploads beyond the first of each version.
    duplicates: int
    #: The most uploads of one version, and that version's bound (1 + its hits).
    worst: tuple[Version, int, int] | None
    #: Versions over their bound (the first ``limit`` of ``over_bound``).
    excess: list[Excess]
    over_bound: int
    #: How many uploads of more than one were explained by each kind of disruption.
    explained_by: dict[str, int]

    @property
    def holds(self) -> bool:
        return self.over_bound == 0


@dataclass
class Ledger:
    uploads: dict[Version, list[Upload]] = field(default_factory=dict)
    disruptions: list[Disruption] = field(default_factory=list)

    def upload(self, version: Version, upload: Upload) -> None:
        self.uploads.setdefault(version, []).append(upload)

    def disrupt(self, disruption: Disruption) -> None:
        self.disruptions.append(disruption)

    def hits(self, uploads: list[Upload]) -> list[Disruption]:
        """The disruptions that caught one of ``uploads`` (in arrival order) in flight."""
        found: list[Disruption] = []
        ordered = sorted(uploads, key=lambda u: u.at)
        for upload, following in itertools.pairwise(ordered):
            for d in self.disruptions:
                caught = d.start <= following.at and d.end >= upload.at and d.reaches(upload)
                if caught and d not in found:
                    found.append(d)
        return found

    def story(self, version: Version, since: float) -> str:
        """One version's uploads and the disruptions around them (seconds after ``since``):
        what a reader needs to tell an unexplained duplicate's cause."""
        uploads = sorted(self.uploads.get(version, []), key=lambda u: u.at)
        if not uploads:
            return "no uploads"
        first, last = uploads[0].at, uploads[-1].at
        near = [d for d in self.disruptions if d.end >= first - 5 and d.start <= last + 5]
        told = [f"upload {u.at - since:.2f}s #{u.serial} port {u.port}" for u in uploads]
        told += [
            f"{d.kind.value} {d.start - since:.2f}-{d.end - since:.2f}s"
            + (f" #{d.serial}" if d.serial is not None else "")
            + (f" ports {sorted(d.ports)}" if d.ports is not None else "")
            for d in near
        ]
        return "; ".join(told)

    def verdict(self, limit: int = 20) -> Verdict:
        """The bound checked for every version (at most ``limit`` excesses listed)."""
        total = duplicates = 0
        worst: tuple[Version, int, int] | None = None
        excess: list[Excess] = []
        over = 0
        explained: Counter[str] = Counter()
        for version, uploads in self.uploads.items():
            n = len(uploads)
            total += n
            if n == 1:
                continue
            duplicates += n - 1
            hits = self.hits(uploads)
            explained.update({d.kind.value for d in hits})
            if worst is None or n > worst[1]:
                worst = (version, n, 1 + len(hits))
            if n > 1 + len(hits):
                over += 1
                if len(excess) < limit:
                    excess.append(Excess(version, n, len(hits)))
        if worst is None and self.uploads:
            version = next(iter(self.uploads))
            worst = (version, 1, 1)
        return Verdict(len(self.uploads), total, duplicates, worst, excess, over, dict(explained))
