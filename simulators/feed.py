"""A seeded, deterministic stream of realistic MATI v4 indicators (specs/mati-api-v4.md §5).

Why it is built this way:

* Indicator ``i`` is a pure function of ``(seed, i)``: any volume (300 000 for the benchmarks)
  costs nothing until a record is asked for, memory stays flat, and two runs with the same seed
  see byte-identical records, so a failing test replays exactly.
* The fields a server filters on (``type``, ``mscore``, threat score, "OSINT only",
  ``last_updated``) come from a cheap integer hash (``feed_attributes``), not from building the
  record (``feed_records``), so the MATI simulator can evaluate a 300k window without rendering
  300k dicts.
* ``last_updated`` is strictly ascending by index, so a time window is two binary searches.
* Changes (:meth:`Feed.mutate`, :meth:`Feed.rereport`, :meth:`Feed.revise`, :meth:`Feed.add`)
  live in a small overlay of revisions. Every revision carries a *generation*, so a reader that
  pinned a generation (the simulator's scroll snapshot, like an Elasticsearch scroll) keeps
  seeing the records as they were when its scroll started, while new queries see the change.

The generator does NOT share any code with the product's parser (``shared/``): a simulator that
parsed with our own code would share our bugs.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

from simulators.feed_attributes import (
    Segment,
    base_mscore_at,
    base_threat_score_at,
    has_threat_rating_at,
    indicator_id,
    kind_at,
    mix,
    profile_at,
)
from simulators.feed_records import RecordBuilder
from simulators.feed_stamps import DAY_MS, from_ms, to_ms
from simulators.feed_vocabulary import CATEGORIES, MISP_KEYS


class ServerFilters(TypedDict, total=False):
    """The filters MATI applies server-side, as ``Feed.window_ms`` takes them: ``Feed.window``
    passes them on untouched, so the two cannot come to disagree on a name or a default."""

    gte_mscore: int | None
    exclude_osint: bool
    gte_threatscore: int | None


@dataclass(frozen=True, slots=True)
class Revision:
    """One overlay revision of an indicator: the full effective override at ``gen``."""

    gen: int
    ts_ms: int
    mscore: int | None = None
    threat_score: int | None = None
    categories: tuple[str, ...] | None = None
    #: True: every source is OSINT from this revision on (Mandiant's own sighting withdrawn).
    osint_only: bool | None = None
    #: MISP warning-list flags set over the generated ones, ``(name, flag)`` sorted by name:
    #: MATI found the value on a list (or no longer does) from this revision on (§5.3).
    misp: tuple[tuple[str, bool], ...] | None = None


class Feed:
    """Indicators ``0 .. len(feed)-1``, ascending ``last_updated`` by index in the base state.

    ``now`` defaults to the current time (milliseconds); pass it for reproducible timestamps.
    """

    def __init__(
        self,
        seed: int = 7,
        count: int = 1000,
        days: float = 30,
        now: datetime | None = None,
    ) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        now_ms = to_ms(now if now is not None else datetime.now(UTC))
        span = round(days * DAY_MS)
        if count and span < count:
            raise ValueError("days too short for strictly ascending millisecond timestamps")
        self.seed = seed
        self.now = from_ms(now_ms)
        # +1: the newest record may sit exactly at ``now``.
        self._segments: list[Segment] = [Segment(0, max(count, 1), now_ms - span, span + 1)]
        self._count = count
        self.generation = 0
        self._history: dict[int, list[Revision]] = {}
        #: (ts_ms, index) of every index whose current revision moved it; sorted.
        self._moved: list[tuple[int, int]] = []
        self._id_index: dict[str, int] | None = None

    # ------------------------------------------------------------------ cheap attributes

    def __len__(self) -> int:
        return self._count

    def _segment(self, i: int) -> Segment:
        for segment in reversed(self._segments):
            if i >= segment.first:
                return segment
        raise IndexError(i)

    def _check(self, i: int) -> None:
        if not 0 <= i < self._count:
            raise IndexError(f"indicator index {i} out of range 0..{self._count - 1}")

    def base_ts_ms(self, i: int) -> int:
        """``last_updated`` of ``i`` before any overlay change (epoch milliseconds)."""
        return self._segment(i).ts(self.seed, i)

    def _rev(self, i: int, generation: int | None = None) -> Revision | None:
        revs = self._history.get(i)
        if not revs:
            return None
        if generation is None:
            return revs[-1]
        for rev in reversed(revs):
            if rev.gen <= generation:
                return rev
        return None

    def version_of(self, i: int, generation: int | None = None) -> int:
        """Which revision of ``i`` is current (or was at ``generation``): -1 for the original.
        A record is a function of its index, this and the blocks left out, so rendered bytes
        can be kept until it changes."""
        rev = self._rev(i, generation)
        return -1 if rev is None else rev.gen

    def ts_ms(self, i: int, generation: int | None = None) -> int:
        """Current (or as-of-``generation``) ``last_updated`` of ``i`` in epoch milliseconds."""
        rev = self._rev(i, generation)
        return rev.ts_ms if rev is not None else self.base_ts_ms(i)

    def last_updated(self, i: int) -> datetime:
        return from_ms(self.ts_ms(i))

    def type_of(self, i: int) -> str:
        return kind_at(self.seed, i)

    def mscore(self, i: int, generation: int | None = None) -> int:
        rev = self._rev(i, generation)
        if rev is not None and rev.mscore is not None:
            return rev.mscore
        return base_mscore_at(self.seed, i)

    def is_osint_only(self, i: int) -> bool:
        """True when every source is OSINT: what ``exclude_osint`` drops (§7)."""
        rev = self._rev(i)
        if rev is not None and rev.osint_only:
            return True
        return profile_at(self.seed, i) == "osint"

    def has_threat_rating(self, i: int) -> bool:
        return has_threat_rating_at(self.seed, i)

    def _base_threat_score(self, i: int) -> int:
        return base_threat_score_at(
            self.seed, i, base_mscore_at(self.seed, i), profile_at(self.seed, i)
        )

    def threat_score(self, i: int, generation: int | None = None) -> int | None:
        """``threat_rating.threat_score``, or None when the record has no ``threat_rating``."""
        if not has_threat_rating_at(self.seed, i):
            return None
        rev = self._rev(i, generation)
        if rev is not None and rev.threat_score is not None:
            return rev.threat_score
        return self._base_threat_score(i)

    def id(self, i: int) -> str:
        return indicator_id(self.seed, i, kind_at(self.seed, i))

    def index_of(self, indicator_id: str) -> int:
        """The index of an id (a lazily built map: ids are uuid5, not invertible)."""
        if self._id_index is None or len(self._id_index) != self._count:
            self._id_index = {self.id(i): i for i in range(self._count)}
        return self._id_index[indicator_id]

    # ------------------------------------------------------------------ windows

    def _first_at_or_after(self, ms: int) -> int:
        lo, hi = 0, self._count
        while lo < hi:
            mid = (lo + hi) // 2
            if self.base_ts_ms(mid) < ms:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _in_window(self, start_ms: int, end_ms: int) -> Iterable[int]:
        """Every index whose current last_updated is in the window, by (last_updated, index)."""
        lo = self._first_at_or_after(start_ms)
        hi = self._first_at_or_after(end_ms + 1)
        history = self._history
        m_lo = _bisect_pairs(self._moved, (start_ms, -1))
        m_hi = _bisect_pairs(self._moved, (end_ms + 1, -1))
        moved = self._moved[m_lo:m_hi]
        # Every changed index sits in ``_moved`` at its current time, never in the base run.
        if not moved:  # base indexes are already in time order: no timestamps needed
            return range(lo, hi) if not history else [i for i in range(lo, hi) if i not in history]
        base = ((self.base_ts_ms(i), i) for i in range(lo, hi) if i not in history)
        return [i for _, i in heapq.merge(base, moved)]

    def window(self, start: datetime, end: datetime, **filters: Unpack[ServerFilters]) -> list[int]:
        """Indexes with ``start <= last_updated <= end`` (inclusive, millisecond resolution) that
        pass the server-side filters, in ascending ``last_updated`` (ties by index)."""
        return self.window_ms(to_ms(start), to_ms(end), **filters)

    def window_ms(
        self,
        start_ms: int,
        end_ms: int,
        *,
        gte_mscore: int | None = None,
        exclude_osint: bool = False,
        gte_threatscore: int | None = None,
    ) -> list[int]:
        indexes = self._in_window(start_ms, end_ms)
        # A sync's first request scans the whole window: one pass per filter, cheapest first.
        seed, history = self.seed, self._history
        if exclude_osint:
            if history:
                indexes = [i for i in indexes if not self.is_osint_only(i)]
            else:
                indexes = [i for i in indexes if profile_at(seed, i) != "osint"]
        if gte_mscore is not None and gte_mscore > 0:  # every mscore is at least 0
            if history:
                indexes = [i for i in indexes if self.mscore(i) >= gte_mscore]
            else:
                indexes = [i for i in indexes if base_mscore_at(seed, i) >= gte_mscore]
        if gte_threatscore is not None:
            scores = ((i, self.threat_score(i)) for i in indexes)
            indexes = [i for i, score in scores if score is not None and score >= gte_threatscore]
        return list(indexes)

    # ------------------------------------------------------------------ changes

    def _sample(self, fraction: float, seed: int) -> list[int]:
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be within [0, 1]")
        k = round(fraction * self._count)
        return sorted(random.Random(seed).sample(range(self._count), k))

    def _commit(self, revs: dict[int, Revision]) -> None:
        for i, rev in revs.items():
            self._history.setdefault(i, []).append(rev)
        kept = [pair for pair in self._moved if pair[1] not in revs]
        kept.extend((rev.ts_ms, i) for i, rev in revs.items())
        kept.sort()
        self._moved = kept

    def mutate(self, fraction: float, *, seed: int, now: datetime) -> list[str]:
        """Change the content (mscore, threat score, categories) of ``fraction`` of the feed and
        bump their ``last_updated`` to ``now``; returns their ids (ascending index).

        Every changed record gets exactly ``now``: many equal timestamps is what a bulk
        re-scoring looks like, and it is the case that breaks a client checkpointing with ``>``.
        """
        now_ms = to_ms(now)
        self.generation += 1
        revs: dict[int, Revision] = {}
        for i in self._sample(fraction, seed):
            rng = random.Random(mix(seed, i, 1000 + self.generation))
            old = self.mscore(i)
            mscore = (old + 1 + rng.randrange(100)) % 101  # always differs
            threat = None
            if self.has_threat_rating(i):
                threat = max(0, min(100, mscore - 25 + rng.randrange(40)))
            cats = tuple(sorted(rng.sample(CATEGORIES, rng.randrange(3))))
            prev = self._rev(i)
            misp = None if prev is None else prev.misp
            revs[i] = Revision(self.generation, now_ms, mscore, threat, cats, misp=misp)
        self._commit(revs)
        return [self.id(i) for i in revs]

    def rereport(self, which: float | Iterable[str], now: datetime, *, seed: int = 0) -> list[str]:
        """Bump ``last_updated`` to ``now`` without changing content: Mandiant saw it again.

        ``which`` is a fraction of the feed (sampled with ``seed``) or an iterable of ids.
        """
        if isinstance(which, (int, float)):
            indexes = self._sample(float(which), seed)
        else:
            indexes = sorted({self.index_of(x) for x in which})
        now_ms = to_ms(now)
        self.generation += 1
        revs: dict[int, Revision] = {}
        for i in indexes:
            prev = self._rev(i)
            if prev is None:
                revs[i] = Revision(self.generation, now_ms)
            else:
                revs[i] = Revision(
                    self.generation,
                    now_ms,
                    prev.mscore,
                    prev.threat_score,
                    prev.categories,
                    prev.osint_only,
                    prev.misp,
                )
        self._commit(revs)
        return [self.id(i) for i in indexes]

    def revise(self, changes: Mapping[str, Mapping[str, Any]], now: datetime) -> list[str]:
        """Give the indicators named (by id) exactly the changes asked (``mscore``,
        ``threat_score``, ``categories``, ``osint_only``, ``misp``; the rest as it is now) and
        bump their ``last_updated`` to ``now``: a test decides which pass and which fail
        afterwards.

        ``misp`` maps warning-list names (§5.3, ones the feed knows) to their flag: those flags
        are set over the record's own, the other lists keep theirs (``{"tranco": True}``: MATI
        now finds the value on the Tranco list)."""
        now_ms = to_ms(now)
        generation = self.generation + 1  # taken only once every change is understood
        revs: dict[int, Revision] = {}
        for mati_id, change in changes.items():
            i = self.index_of(mati_id)
            prev = self._rev(i)
            fields = {
                "mscore": self.mscore(i),
                "threat_score": None if prev is None else prev.threat_score,
                "categories": None if prev is None else prev.categories,
                "osint_only": None if prev is None else prev.osint_only,
                **change,
            }
            before = None if prev is None else prev.misp
            if "misp" in change:
                fields["misp"] = _misp_flags(before, change["misp"])
            else:
                fields["misp"] = before
            revs[i] = Revision(generation, now_ms, **fields)
        self.generation = generation
        self._commit(revs)
        return list(changes)

    def add(self, n: int, now: datetime) -> list[str]:
        """Append ``n`` new indicators, ``last_updated`` spread after the newest base record
        up to ``now``; returns their ids."""
        if n <= 0:
            return []
        last = self._segments[-1]
        start = last.end_ms if self._count else last.start_ms
        now_ms = to_ms(now)
        if now_ms < start:
            raise ValueError("add(): now is before the newest indicator")
        self.generation += 1
        self._segments.append(Segment(self._count, n, start, now_ms - start + 1))
        first = self._count
        self._count += n
        return [self.id(i) for i in range(first, self._count)]

    # ------------------------------------------------------------------ records

    def record(
        self, i: int, *, generation: int | None = None, omit: Collection[str] = ()
    ) -> dict[str, Any]:
        """The full indicator ``i`` as the API would send it with every ``include_*`` flag on.

        With ``generation``, the record as it was at that generation (scroll snapshots).
        Optional keys may be absent, like the real service (§3.5): ``threat_rating`` on some,
        ``campaigns``/``reports`` on a few. ``omit`` names optional blocks (``misp``,
        ``threat_rating``, ``category``, ``campaigns``, ``reports``) to leave out: the record
        is the full one minus those keys, cheaper than building and dropping them.
        """
        self._check(i)
        rev = self._rev(i, generation)
        record = RecordBuilder(self.seed, i, rev, self._segment(i), omit).build()
        if rev is not None and rev.misp and "misp" in record:
            record["misp"] = {**record["misp"], **dict(rev.misp)}  # same keys, same order
        return record

    def records(
        self,
        indexes: Iterable[int],
        *,
        generation: int | None = None,
        omit: Collection[str] = (),
    ) -> Iterator[dict[str, Any]]:
        for i in indexes:
            yield self.record(i, generation=generation, omit=omit)


def _misp_flags(
    before: tuple[tuple[str, bool], ...] | None, change: Mapping[str, bool]
) -> tuple[tuple[str, bool], ...]:
    """The warning-list flags a revision sets: ``change`` over the ones set ``before``."""
    unknown = sorted(name for name in change if name not in MISP_KEYS)
    if unknown:
        raise ValueError(f"not a warning list the feed knows: {', '.join(unknown)}")
    if not all(isinstance(flag, bool) for flag in change.values()):
        raise ValueError("a warning-list flag is true or false")
    return tuple(sorted({**dict(before or ()), **change}.items()))


def _bisect_pairs(pairs: list[tuple[int, int]], key: tuple[int, int]) -> int:
    lo, hi = 0, len(pairs)
    while lo < hi:
        mid = (lo + hi) // 2
        if pairs[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo
