"""A seeded, deterministic stream of realistic MATI v4 indicators (specs/mati-api-v4.md §5).

Why it is built this way:

* Indicator ``i`` is a pure function of ``(seed, i)``: any volume (300 000 for the benchmarks)
  costs nothing until a record is asked for, memory stays flat, and two runs with the same seed
  see byte-identical records, so a failing test replays exactly.
* The fields a server filters on (``type``, ``mscore``, threat score, "OSINT only",
  ``last_updated``) come from a cheap integer hash, not from building the record, so the MATI
  simulator can evaluate a 300k window without rendering 300k dicts.
* ``last_updated`` is strictly ascending by index, so a time window is two binary searches.
* Changes (:meth:`Feed.mutate`, :meth:`Feed.rereport`, :meth:`Feed.add`) live in a small overlay
  of revisions. Every revision carries a *generation*, so a reader that pinned a generation (the
  simulator's scroll snapshot, like an Elasticsearch scroll) keeps seeing the records as they
  were when its scroll started, while new queries see the change.

The generator does NOT share any code with the product's parser (``shared/``): a simulator that
parsed with our own code would share our bugs.
"""

from __future__ import annotations

import _random
import functools
import hashlib
import heapq
import random
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

_MASK = (1 << 64) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)  # only for formatting UTC stamps
_DAY_MS = 86_400_000
T = TypeVar("T")

#: Namespace of every uuid5 the feed mints; fixed so ids are stable across runs and machines.
NAMESPACE = uuid.UUID("5b0b6a0e-2f4c-4f51-9a57-6d1a8f0c7e11")
_NS_BYTES = NAMESPACE.bytes

TYPES = ("ipv4", "fqdn", "url", "md5")

#: Source categories seen in recorded traffic (§5.2).
CATEGORIES = (
    "malware",
    "control-server",
    "botnet",
    "infostealer",
    "banker",
    "phishing",
    "exploit",
    "exploit/vuln-scanning",
)

#: OSINT feeds by indicator type, names as seen in recorded traffic (§5.2).
OSINT_SOURCES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "ipv4": (
        ("blocklist_de", ("exploit/vuln-scanning",)),
        ("blocklist_net_ua", ()),
        ("greensnow", ("exploit/vuln-scanning",)),
        ("voipbl", ()),
        ("myip_blacklist", ()),
        ("the_haleys_ssh_dict_attack", ("exploit",)),
    ),
    "fqdn": (
        ("dtm.blackbeard", ("phishing",)),
        ("dtm.vanellope", ()),
        ("futex.re", ("malware",)),
    ),
    "url": (
        ("phishtank", ("phishing",)),
        ("phishstats", ("phishing",)),
        ("urlhaus", ("malware",)),
    ),
    "md5": (
        ("urlhaus", ("malware",)),
        ("dtm.vanellope", ()),
    ),
}

MISP_KEYS = (
    "akamai",
    "alexa",
    "alexa_1M",
    "amazon-aws",
    "apple",
    "automated-malware-analysis",
    "bank-website",
    "cisco_1M",
    "cisco_top1000",
    "cisco_top10k",
    "cisco_top20k",
    "cisco_top5k",
    "cloudflare",
    "common-contact-emails",
    "common-ioc-false-positive",
    "covid",
    "covid-19-cyber-threat-coalition-whitelist",
    "covid-19-krassi-whitelist",
    "crl-hostname",
    "crl-ip",
    "dax30",
    "disposable-email",
    "dynamic-dns",
    "eicar.com",
    "empty-hashes",
    "fastly",
    "google",
    "google-chrome-crux-1million",
    "google-gcp",
    "google-gmail-sending-ips",
    "googlebot",
    "ipv6-linklocal",
    "majestic_million",
    "majestic_million_1M",
    "microsoft",
    "microsoft-attack-simulator",
    "microsoft-azure",
    "microsoft-azure-china",
    "microsoft-azure-germany",
    "microsoft-azure-us-gov",
    "microsoft-office365",
    "microsoft-office365-cn",
    "microsoft-office365-ip",
    "microsoft-win10-connection-endpoints",
    "moz-top500",
    "mozilla-CA",
    "mozilla-IntermediateCA",
    "multicast",
    "nioc-filehash",
    "ovh-cluster",
    "parking-domain",
    "parking-domain-ns",
    "phone_numbers",
    "public-dns-hostname",
    "public-dns-v4",
    "public-dns-v6",
    "rfc1918",
    "rfc3849",
    "rfc5735",
    "rfc6598",
    "rfc6761",
    "second-level-tlds",
    "security-provider-blogpost",
    "sinkholes",
    "smtp-receiving-ips",
    "smtp-sending-ips",
    "stackpath",
    "tenable-cloud-ipv4",
    "tenable-cloud-ipv6",
    "ti-falsepositives",
    "tlds",
    "tranco",
    "tranco10k",
    "university_domains",
    "url-shortener",
    "vpn-ipv4",
    "vpn-ipv6",
    "whats-my-ip",
    "wikimedia",
)

THREAT_ACTORS = (
    "APT28",
    "APT29",
    "APT41",
    "FIN7",
    "FIN11",
    "UNC961",
    "UNC2452",
    "UNC3944",
    "UNC4736",
    "UNC9999",
)
MALWARE = (
    "BEATDROP",
    "BEACON",
    "FAKEGATE",
    "QAKBOT",
    "ICEDID",
    "DARKGATE",
    "SMOKELOADER",
    "LOCKBIT",
    "SUNBURST",
    "GOOTLOADER",
)
CAMPAIGNS = (
    ("CAMP.24.012", "UNC3944 Targets Telecommunications Help Desks with SMS Phishing"),
    ("CAMP.24.031", "APT29 Phishing Campaign Delivering BEATDROP to Diplomatic Entities"),
    ("CAMP.25.014", "UNC9999 Targets Logistics Firms with FAKEGATE Loader"),
    ("GLOBAL.21.005", "Widespread Exploitation of Edge Devices by Multiple Actors"),
    ("CAMP.23.077", "FIN7 Uses Malvertising to Distribute DARKGATE"),
)
REPORT_TYPES = (
    "Threat Activity Report",
    "Event Coverage/Implication",
    "Actor Overview",
    "Malware Profile",
    "Vulnerability Report",
)
AUDIENCES = ("cyber crime", "cyber espionage", "fusion", "vulnerability", "operational")

_WORDS = (
    "update",
    "cdn",
    "sync",
    "secure",
    "login",
    "cloud",
    "mail",
    "portal",
    "api",
    "static",
    "office",
    "verify",
    "account",
    "files",
    "drive",
    "support",
    "auth",
    "gate",
    "service",
    "data",
)
_TLDS = ("com", "net", "org", "info", "xyz", "top", "ru", "biz", "online", "site", "io", "cc")
_PATHS = ("gate.php", "index.php", "login.html", "dl/payload.exe", "wp-admin/x.php", "a/b/c.js")


def _mix(seed: int, i: int, salt: int) -> int:
    """splitmix64 of (seed, i, salt): the cheap, well-spread hash every attribute derives from."""
    z = (
        seed * 0x9E3779B97F4A7C15 + (i + 1) * 0xD1B54A32D192ED03 + salt * 0x94D049BB133111EB
    ) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


#: The salts of the per-record hashes, in the order ``_mixes`` returns them.
_SALTS = (99, 1, 2, 3, 4, 5, 11)
_SALTED = tuple(salt * 0x94D049BB133111EB for salt in _SALTS)


def _mixes(seed: int, i: int) -> list[int]:
    """``[_mix(seed, i, salt) for salt in _SALTS]``, sharing the common part (every record
    needs all seven: its generator seed, type, mscore, profile, rating, threat, jitter)."""
    common = seed * 0x9E3779B97F4A7C15 + (i + 1) * 0xD1B54A32D192ED03
    out = []
    for salted in _SALTED:
        z = (common + salted) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        out.append(z ^ (z >> 31))
    return out


# Attributes a server filters on, each from its own hash of (seed, index): the Feed methods and
# the record builder share them, so a window and the records in it can never disagree.


def _kind(seed: int, i: int) -> str:
    return _kind_of(_mix(seed, i, 1))


def _kind_of(u1: int) -> str:
    u = u1 % 100
    if u < 35:
        return "ipv4"
    if u < 60:
        return "fqdn"
    if u < 80:
        return "url"
    return "md5"


def _base_mscore(seed: int, i: int) -> int:
    return _base_mscore_of(_mix(seed, i, 2))


def _base_mscore_of(u: int) -> int:
    bucket = u % 100
    if bucket < 45:  # known malicious
        return 80 + (u >> 8) % 21
    if bucket < 55:  # every indicator starts at 50 (§5.4)
        return 50
    return (u >> 8) % 80


def _profile(seed: int, i: int) -> str:
    """Who reported it: ``mandiant`` only, ``both`` or ``osint`` only."""
    return _profile_of(_mix(seed, i, 3))


def _profile_of(u3: int) -> str:
    u = u3 % 100
    if u < 45:
        return "mandiant"
    if u < 75:
        return "both"
    return "osint"


def _has_threat_rating(seed: int, i: int) -> bool:
    return _has_threat_rating_of(_mix(seed, i, 4))


def _has_threat_rating_of(u4: int) -> bool:
    return u4 % 100 < 85


def _base_threat_score(seed: int, i: int, base_mscore: int, profile: str) -> int:
    return _base_threat_score_of(_mix(seed, i, 5), base_mscore, profile)


def _base_threat_score_of(u5: int, base_mscore: int, profile: str) -> int:
    score = base_mscore - 30 + u5 % 41
    if profile == "osint":
        score -= 15
    return max(0, min(100, score))


def _indicator_id(seed: int, i: int, kind: str) -> str:
    """``<type>--<uuid5>``: stable per (seed, index)."""
    return f"{kind}--{_uuid5_of(f'{seed}/{i}/{kind}')}"


def to_ms(moment: datetime) -> int:
    """A timezone-aware datetime as integer epoch milliseconds (exact: no float rounding)."""
    if moment.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


@functools.lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    """``YYYY-MM-DDT`` of a day since the epoch; a feed spans a few hundred days at most."""
    return (_EPOCH_NAIVE + timedelta(days=day)).strftime("%Y-%m-%dT")


# A record formats ~8 stamps: table look-ups instead of a datetime each (4x cheaper).
_HH_MM = tuple(f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440))
_SS = tuple(f"{s:02d}" for s in range(60))
_MSS = tuple(f".{m:03d}" for m in range(1000))


def _iso(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmm`` of epoch milliseconds, UTC (no suffix)."""
    day, rest = divmod(ms, _DAY_MS)
    return _day_prefix(day) + _HH_MM[rest // 60_000] + _SS[rest // 1000 % 60] + _MSS[rest % 1000]


def iso_ms_z(ms: int) -> str:
    """``last_updated`` form: ``2023-01-26T08:19:05.976Z`` (real milliseconds)."""
    return _iso(ms) + "Z"


def iso_s_z(ms: int) -> str:
    """Top-level ``first_seen``/``last_seen`` form: seconds precision, ``.000Z``."""
    day, rest = divmod(ms, _DAY_MS)
    return _day_prefix(day) + _HH_MM[rest // 60_000] + _SS[rest // 1000 % 60] + ".000Z"


def iso_offset(ms: int) -> str:
    """``sources[]`` timestamp form: ``2025-03-02T11:04:19.512+0000`` (numeric offset)."""
    return _iso(ms) + "+0000"


#: The hex digit of a uuid's variant nibble (RFC 4122: ``10xx``) for each hex digit of the hash.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _uuid5_of(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))`` without the UUID object (hot path: every id)."""
    x = hashlib.sha1(_NS_BYTES + name.encode(), usedforsecurity=False).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


#: The same, remembered: for the few names that recur (actors, malware, campaigns). Names
#: unique to one record (indicator and hash ids) skip the cache, where they would only churn it.
_uuid5 = functools.lru_cache(maxsize=1024)(_uuid5_of)


@dataclass(frozen=True, slots=True)
class _Segment:
    """A run of indexes whose base timestamps spread over ``[start_ms, start_ms + span_ms)``."""

    first: int
    n: int
    start_ms: int
    span_ms: int

    def ts(self, seed: int, i: int) -> int:
        return self.ts_of(i, _mix(seed, i, 11))

    def ts_of(self, i: int, u11: int) -> int:
        """``ts`` given ``_mix(seed, i, 11)``."""
        k = i - self.first
        gap = self.span_ms // self.n
        # Jitter stays inside the index's own slot, so timestamps never cross: strictly
        # ascending whenever the slot is at least a millisecond wide.
        jitter = u11 % gap if gap > 1 else 0
        return self.start_ms + (k * self.span_ms) // self.n + jitter

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.span_ms


@dataclass(frozen=True, slots=True)
class _Rev:
    """One overlay revision of an indicator: the full effective override at ``gen``."""

    gen: int
    ts_ms: int
    mscore: int | None = None
    threat_score: int | None = None
    categories: tuple[str, ...] | None = None


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
        span = round(days * _DAY_MS)
        if count and span < count:
            raise ValueError("days too short for strictly ascending millisecond timestamps")
        self.seed = seed
        self.now = from_ms(now_ms)
        # +1: the newest record may sit exactly at ``now``.
        self._segments: list[_Segment] = [_Segment(0, max(count, 1), now_ms - span, span + 1)]
        self._count = count
        self.generation = 0
        self._history: dict[int, list[_Rev]] = {}
        #: (ts_ms, index) of every index whose current revision moved it; sorted.
        self._moved: list[tuple[int, int]] = []
        self._id_index: dict[str, int] | None = None

    # ------------------------------------------------------------------ cheap attributes

    def __len__(self) -> int:
        return self._count

    def _segment(self, i: int) -> _Segment:
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

    def _rev(self, i: int, generation: int | None = None) -> _Rev | None:
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
        return _kind(self.seed, i)

    def _base_mscore(self, i: int) -> int:
        return _base_mscore(self.seed, i)

    def mscore(self, i: int, generation: int | None = None) -> int:
        rev = self._rev(i, generation)
        if rev is not None and rev.mscore is not None:
            return rev.mscore
        return _base_mscore(self.seed, i)

    def _profile(self, i: int) -> str:
        """Who reported it: ``mandiant`` only, ``both`` or ``osint`` only."""
        return _profile(self.seed, i)

    def is_osint_only(self, i: int) -> bool:
        """True when every source is OSINT: what ``exclude_osint`` drops (§7)."""
        return _profile(self.seed, i) == "osint"

    def has_threat_rating(self, i: int) -> bool:
        return _has_threat_rating(self.seed, i)

    def _base_threat_score(self, i: int) -> int:
        return _base_threat_score(self.seed, i, _base_mscore(self.seed, i), _profile(self.seed, i))

    def threat_score(self, i: int, generation: int | None = None) -> int | None:
        """``threat_rating.threat_score``, or None when the record has no ``threat_rating``."""
        if not _has_threat_rating(self.seed, i):
            return None
        rev = self._rev(i, generation)
        if rev is not None and rev.threat_score is not None:
            return rev.threat_score
        return self._base_threat_score(i)

    def id(self, i: int) -> str:
        return _indicator_id(self.seed, i, _kind(self.seed, i))

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

    def window(
        self,
        start: datetime,
        end: datetime,
        *,
        gte_mscore: int | None = None,
        exclude_osint: bool = False,
        gte_threatscore: int | None = None,
    ) -> list[int]:
        """Indexes with ``start <= last_updated <= end`` (inclusive, millisecond resolution) that
        pass the server-side filters, in ascending ``last_updated`` (ties by index)."""
        return self.window_ms(
            to_ms(start),
            to_ms(end),
            gte_mscore=gte_mscore,
            exclude_osint=exclude_osint,
            gte_threatscore=gte_threatscore,
        )

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
            indexes = [i for i in indexes if _profile(seed, i) != "osint"]
        if gte_mscore is not None and gte_mscore > 0:  # every mscore is at least 0
            if history:
                indexes = [i for i in indexes if self.mscore(i) >= gte_mscore]
            else:
                indexes = [i for i in indexes if _base_mscore(seed, i) >= gte_mscore]
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

    def _commit(self, revs: dict[int, _Rev]) -> None:
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
        revs: dict[int, _Rev] = {}
        for i in self._sample(fraction, seed):
            rng = random.Random(_mix(seed, i, 1000 + self.generation))
            old = self.mscore(i)
            mscore = (old + 1 + rng.randrange(100)) % 101  # always differs
            threat = None
            if self.has_threat_rating(i):
                threat = max(0, min(100, mscore - 25 + rng.randrange(40)))
            cats = tuple(sorted(rng.sample(CATEGORIES, rng.randrange(3))))
            revs[i] = _Rev(self.generation, now_ms, mscore, threat, cats)
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
        revs: dict[int, _Rev] = {}
        for i in indexes:
            prev = self._rev(i)
            if prev is None:
                revs[i] = _Rev(self.generation, now_ms)
            else:
                revs[i] = _Rev(
                    self.generation, now_ms, prev.mscore, prev.threat_score, prev.categories
                )
        self._commit(revs)
        return [self.id(i) for i in indexes]

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
        self._segments.append(_Segment(self._count, n, start, now_ms - start + 1))
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
        return _Builder(self, i, generation, omit).build()

    def records(
        self,
        indexes: Iterable[int],
        *,
        generation: int | None = None,
        omit: Collection[str] = (),
    ) -> Iterator[dict[str, Any]]:
        for i in indexes:
            yield self.record(i, generation=generation, omit=omit)


def _bisect_pairs(pairs: list[tuple[int, int]], key: tuple[int, int]) -> int:
    lo, hi = 0, len(pairs)
    while lo < hi:
        mid = (lo + hi) // 2
        if pairs[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


class _Rng(random.Random):
    """``random.Random`` plus exact, cheaper forms of the draws the builder makes.

    ``below(n)`` is the draw ``randrange``/``choice`` make (``Random._randbelow`` for the
    Mersenne Twister) without their argument checking, and ``sample_k`` is ``Random.sample``'s
    algorithm for the small ``k`` used here; both consume the generator exactly like the
    originals, so records stay byte-identical to those generated with them (a recorded seed
    keeps replaying the same feed). The builder spends most of its time drawing numbers.
    """

    @classmethod
    def seeded(cls, seed: int) -> _Rng:
        """``cls(seed)``, minus ``Random.__init__``/``Random.seed``'s Python-level argument
        handling: for an int they come down to this C seeding (and ``gauss()``'s cache,
        which nothing here uses)."""
        rng = cls.__new__(cls)
        _random.Random.seed(rng, seed)
        return rng

    def shuffle_list(self, x: list[Any]) -> None:
        """``shuffle(x)``, the same swaps."""
        below = self.below
        for i in range(len(x) - 1, 0, -1):
            j = below(i + 1)
            x[i], x[j] = x[j], x[i]

    def below(self, n: int) -> int:
        """``randrange(n)``: uniform in ``[0, n)``, ``n > 0``."""
        getrandbits = self.getrandbits
        k = n.bit_length()
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return r

    def sample_k(self, population: Sequence[T], k: int) -> list[T]:
        """``sample(population, k)`` for ``k <= 5``: the same draws and the same picks."""
        n = len(population)
        below = self.below
        if k == 1:  # both paths below come down to this for one pick
            return [population[below(n)]]
        result: list[T] = []
        if n <= 21:  # sample()'s small-population path (a pool list beats a set)
            pool = list(population)
            for j in range(k):
                x = below(n - j)
                result.append(pool[x])
                pool[x] = pool[n - j - 1]
            return result
        selected: set[int] = set()
        for _ in range(k):
            x = below(n)
            while x in selected:
                x = below(n)
            selected.add(x)
            result.append(population[x])
        return result


#: A source was last seen up to 6 h (less the minute ``newest`` keeps) before the record's
#: base time, and first seen up to 40 days before that.
_LAST_AGO = 6 * 3_600_000 - 60_000
_LAST_AGO_BITS = _LAST_AGO.bit_length()
_SEEN_FOR = 40 * _DAY_MS
_SEEN_FOR_BITS = _SEEN_FOR.bit_length()


class _Builder:
    """Renders one record; a class only to keep each piece short and readable.

    The order of the draws from ``rng`` is part of the feed's definition: changing it (or a
    draw's bounds) changes every later field of every record of every seed.
    """

    __slots__ = (
        "base_ts",
        "below",
        "hashes",
        "i",
        "kind",
        "omit",
        "rand",
        "rev",
        "rng",
        "seed",
        "seen",
        "ts",
    )

    def __init__(self, feed: Feed, i: int, generation: int | None, omit: Collection[str]) -> None:
        self.i = i
        self.omit = omit
        rev = feed._rev(i, generation)
        self.rev = rev
        self.seed = seed = feed.seed
        self.hashes = hashes = _mixes(seed, i)
        self.rng = rng = _Rng.seeded(hashes[0])
        self.below = rng.below
        self.rand = rng.random
        self.kind = _kind_of(hashes[1])
        # Content timestamps derive from the base time so a rereport does not rewrite history.
        self.base_ts = feed._segment(i).ts_of(i, hashes[6])
        self.ts = rev.ts_ms if rev is not None else self.base_ts
        #: (min first_seen, max last_seen) over the sources, filled while they are built.
        self.seen = (self.base_ts, 0)

    def build(self) -> dict[str, Any]:
        seed, i, rev, rand, omit = self.seed, self.i, self.rev, self.rand, self.omit
        kind, hashes = self.kind, self.hashes
        profile = _profile_of(hashes[3])
        base_mscore = _base_mscore_of(hashes[2])
        mscore = rev.mscore if rev is not None and rev.mscore is not None else base_mscore
        value = self._value()
        record_id = _indicator_id(seed, i, kind)
        record: dict[str, Any] = {
            "id": record_id,
            "mscore": mscore,
            "type": kind,
            "value": value,
            "is_exclusive": profile == "mandiant" and rand() < 0.6,
            "is_publishable": rand() < 0.97,
        }
        sources = self._sources(profile)
        record["sources"] = sources
        if kind == "md5":
            record["associated_hashes"] = self._hashes(record_id, value)
        attributed = self._attributed()
        if attributed is not None:
            record["attributed_associations"] = attributed
        if _has_threat_rating_of(hashes[4]):
            if rev is not None and rev.threat_score is not None:
                score = rev.threat_score
            else:
                score = _base_threat_score_of(hashes[5], base_mscore, profile)
            rating = self._threat_rating(score, mscore, bool(attributed))
            if "threat_rating" not in omit:
                record["threat_rating"] = rating
        misp = self._misp(value)
        if "misp" not in omit:
            record["misp"] = misp
        if "category" not in omit:
            record["category"] = sorted({c for s in sources for c in s["category"]})
        record["last_updated"] = iso_ms_z(self.ts)
        first, last = self.seen
        if rand() < 0.05:  # "usually min/max of the sources, but not always"
            first -= 1 + self.below(3 * _DAY_MS - 1)
        record["first_seen"] = iso_s_z(first)
        record["last_seen"] = iso_s_z(last)
        if "reports" in omit and "campaigns" in omit:
            return record  # nothing after this point draws for a block that is kept
        campaigns = self._campaigns()
        if campaigns is not None and "campaigns" not in omit:
            record["campaigns"] = campaigns
        if "reports" in omit:
            return record  # the last block: its draws decide nothing else
        reports = self._reports()
        if reports is not None:
            record["reports"] = reports
        return record

    # -- value -------------------------------------------------------------------------

    def _host(self) -> str:
        rng, below = self.rng, self.below
        words = rng.sample_k(_WORDS, 1 + below(2))
        return f"{'-'.join(words)}-{_base36(self.i)}{self.seed % 97}.{_TLDS[below(12)]}"

    def _value(self) -> str:
        below, i = self.below, self.i
        if self.kind == "ipv4":
            x = (i * 2654435761 + self.seed * 40503 + 0x0A000001) & 0xFFFFFFFF
            x ^= x >> 16
            x = (x * 0x45D9F3B) & 0xFFFFFFFF
            return f"{x >> 24}.{(x >> 16) & 0xFF}.{(x >> 8) & 0xFF}.{x & 0xFF}"
        if self.kind == "md5":
            return _digest("md5", self.seed, i)
        escape = self.rand()
        if self.kind == "fqdn":
            host = self._host()
            if escape < 0.02:  # values that need STIX escaping (§ DESIGN 5)
                return f"o'{host}"
            if escape < 0.03:
                return f"mail\\{host}"
            return host
        path = _PATHS[below(6)]
        scheme = ("http", "https")[below(2)]
        url = f"{scheme}://{self._host()}/{_base36(i)}/{path}"
        if escape < 0.02:
            return f"{url}?q=it's"
        if escape < 0.035:
            return f"{url}?p=C:\\Users\\Public\\a.exe"
        if escape < 0.045:  # backslash before a quote: wrong escape order shows here
            return f"{url}?x=\\'"
        if escape < 0.06:
            return f"{url}?id={below(1000)}&ref=%27%5C"
        return url

    # -- sources -----------------------------------------------------------------------

    def _source_specs(
        self, profile: str, categorized: bool
    ) -> Iterator[tuple[str, bool, list[str]]]:
        """(name, osint, categories) of each source, drawn lazily: the caller draws each
        source's dates between two of these, which is part of the draw order."""
        rng = self.rng
        below = rng.below
        if profile != "osint":  # "mandiant" or "both"
            for _ in range(1 if rng.random() < 0.8 else 2 + below(2)):
                yield (
                    "Mandiant",
                    False,
                    rng.sample_k(CATEGORIES, 1 + below(2)) if categorized else [],
                )
        if profile != "mandiant":  # "osint" or "both"
            feeds = OSINT_SOURCES[self.kind]
            for name, feed_cats in rng.sample_k(feeds, 1 + below(len(feeds))):
                yield name, True, list(feed_cats) if categorized else []

    def _sources(self, profile: str) -> list[dict[str, Any]]:
        """The sources, each with a plausible (first_seen, last_seen) before ``last_updated``.

        The hottest loop of the feed (two or three sources a record): the date arithmetic and
        formatting are spelled out here rather than called.
        """
        rng = self.rng
        bits, rand = rng.getrandbits, rng.random
        newest = self.base_ts - 60_000
        lo, hi = self.seen
        sources: list[dict[str, Any]] = []
        for name, osint, cats in self._source_specs(profile, rand() < 0.55):
            # last = newest - below(_LAST_AGO); first = last - below(_SEEN_FOR), written out.
            ago = bits(_LAST_AGO_BITS)
            while ago >= _LAST_AGO:
                ago = bits(_LAST_AGO_BITS)
            last = newest - ago
            ago = bits(_SEEN_FOR_BITS)
            while ago >= _SEEN_FOR:
                ago = bits(_SEEN_FOR_BITS)
            first = last - ago
            if rand() < 0.3:  # seen once
                first = last
            if rand() < 0.3:  # whole-second timestamps occur
                first -= first % 1000
                last -= last % 1000
            if first < lo:
                lo = first
            if last > hi:
                hi = last
            day, rest = divmod(last, _DAY_MS)
            last_text = (
                f"{_day_prefix(day)}{_HH_MM[rest // 60_000]}{_SS[rest // 1000 % 60]}"
                f"{_MSS[rest % 1000]}+0000"
            )
            if first == last:
                first_text = last_text
            else:
                day, rest = divmod(first, _DAY_MS)
                first_text = (
                    f"{_day_prefix(day)}{_HH_MM[rest // 60_000]}{_SS[rest // 1000 % 60]}"
                    f"{_MSS[rest % 1000]}+0000"
                )
            sources.append(
                {
                    "first_seen": first_text,
                    "last_seen": last_text,
                    "osint": osint,
                    "category": cats,
                    "source_name": name,
                }
            )
        self.seen = (lo, hi)
        rng.shuffle_list(sources)
        rev = self.rev
        if rev is not None and rev.categories is not None:
            for n, source in enumerate(sources):
                source["category"] = list(rev.categories) if n == 0 else []
        return sources

    # -- optional blocks ---------------------------------------------------------------

    def _hashes(self, md5_id: str, md5: str) -> list[dict[str, str]]:
        out = [{"id": md5_id, "type": "md5", "value": md5}]
        for kind in ("sha1", "sha256"):
            if self.rand() < 0.85:
                value = _digest(kind, self.seed, self.i)
                out.append(
                    {"id": f"{kind}--{_uuid5_of(f'{kind}/{value}')}", "type": kind, "value": value}
                )
        return out

    def _attributed(self) -> list[dict[str, str]] | None:
        rand, below = self.rand, self.below
        u = rand()
        if u < 0.55:
            return None
        if u < 0.6:
            return []
        out = []
        if rand() < 0.6:
            name = THREAT_ACTORS[below(len(THREAT_ACTORS))]
            out.append(
                {"id": f"threat-actor--{_uuid5(name)}", "name": name, "type": "threat-actor"}
            )
        if not out or rand() < 0.6:
            name = MALWARE[below(len(MALWARE))]
            out.append({"id": f"malware--{_uuid5(name)}", "name": name, "type": "malware"})
        return out

    def _threat_rating(self, score: int, mscore: int, attributed: bool) -> dict[str, Any]:
        below = self.below
        confidence = max(0, min(100, mscore - 10 + below(21)))
        # Unattributed: choice([[], [], ["high-impact"]]), as fresh lists.
        reasons = ["attributed"] if attributed else ["high-impact"] if below(3) == 2 else []
        return {
            "confidence_level": _level(confidence),
            "confidence_score": confidence,
            "severity_level": _level(score),
            "severity_reason": reasons,
            "threat_score": score,
        }

    def _misp(self, value: str) -> dict[str, bool] | None:
        """The MISP warning-list flags (None when omitted: the draws happen either way)."""
        flagged = self.rng.sample_k(MISP_KEYS, 1 + self.below(3)) if self.rand() < 0.08 else []
        if "misp" in self.omit:
            return None
        flags = dict.fromkeys(MISP_KEYS, False)
        for key in flagged:
            flags[key] = True
        if self.kind == "ipv4" and value.startswith(("10.", "192.168.")):
            flags["rfc1918"] = True
        return flags

    def _campaigns(self) -> list[dict[str, str]] | None:
        u = self.rand()
        if u < 0.08:  # absent even when requested (§3.5)
            return None
        if u < 0.8:
            return []
        picks = self.rng.sample_k(CAMPAIGNS, 1 + self.below(2))
        return [
            {"id": f"campaign--{_uuid5(name)}", "name": name, "title": title}
            for name, title in picks
        ]

    def _reports(self) -> list[dict[str, Any]] | None:
        rng, below = self.rng, self.below
        u = self.rand()
        if u < 0.08:
            return None
        if u < 0.78:
            return []
        out = []
        for _ in range(1 + below(3)):
            number = 1 + below(99_999_998)
            published = self.base_ts - _DAY_MS - below(199 * _DAY_MS)
            out.append(
                {
                    "id": f"report--{_uuid5_of(f'report/{number}')}",
                    "report_id": f"{iso_s_z(published)[2:4]}-{number:08d}",
                    "type": REPORT_TYPES[below(len(REPORT_TYPES))],
                    "title": f"{THREAT_ACTORS[below(len(THREAT_ACTORS))]} Using "
                    f"{MALWARE[below(len(MALWARE))]}",
                    "published_date": iso_ms_z(published),
                    "audience": sorted(rng.sample_k(AUDIENCES, 1 + below(2))),
                }
            )
        return out


def _level(score: int) -> str:
    if score >= 80:
        return "high"
    if score >= 50:
        return "medium"
    return "low"


_DIGESTS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}


def _digest(kind: str, seed: int, i: int) -> str:
    return _DIGESTS[kind](f"mati-sim/{seed}/{i}".encode()).hexdigest()


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
