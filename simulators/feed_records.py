"""One MATI indicator record, rendered from its index (specs/mati-api-v4.md §5).

A record is a pure function of ``(seed, i)``, the revision the feed's overlay holds for it, and
the optional blocks left out, so two runs with the same seed see byte-identical records and a
failing test replays exactly. Nothing here shares code with the product's parser (``shared/``):
a simulator that parsed with our own code would share our bugs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from simulators.feed_attributes import (
    Segment,
    base_mscore_of,
    base_threat_score_of,
    has_threat_rating_of,
    indicator_id,
    kind_of,
    mixes,
    profile_of,
    uuid5,
    uuid5_of,
)
from simulators.feed_rng import Rng
from simulators.feed_stamps import DAY_MS, HH_MM, MSS, SS, day_prefix, iso_ms_z, iso_s_z
from simulators.feed_vocabulary import (
    AUDIENCES,
    CAMPAIGNS,
    CATEGORIES,
    MALWARE,
    MISP_KEYS,
    OSINT_SOURCES,
    REPORT_TYPES,
    THREAT_ACTORS,
    TLDS,
    URL_PATHS,
    WORDS,
)

if TYPE_CHECKING:
    from simulators.feed import Revision

#: A source was last seen up to 6 h (less the minute ``newest`` keeps) before the record's
#: base time, and first seen up to 40 days before that.
_LAST_AGO = 6 * 3_600_000 - 60_000
_LAST_AGO_BITS = _LAST_AGO.bit_length()
_SEEN_FOR = 40 * DAY_MS
_SEEN_FOR_BITS = _SEEN_FOR.bit_length()


class RecordBuilder:
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

    def __init__(
        self,
        seed: int,
        i: int,
        rev: Revision | None,
        segment: Segment,
        omit: Collection[str],
    ) -> None:
        self.i = i
        self.omit = omit
        self.rev = rev
        self.seed = seed
        self.hashes = hashes = mixes(seed, i)
        self.rng = rng = Rng.seeded(hashes[0])
        self.below = rng.below
        self.rand = rng.random
        self.kind = kind_of(hashes[1])
        # Content timestamps derive from the base time so a rereport does not rewrite history.
        self.base_ts = segment.ts_of(i, hashes[6])
        self.ts = rev.ts_ms if rev is not None else self.base_ts
        #: (min first_seen, max last_seen) over the sources, filled while they are built.
        self.seen = (self.base_ts, 0)

    def build(self) -> dict[str, Any]:
        seed, i, rev, rand, omit = self.seed, self.i, self.rev, self.rand, self.omit
        kind, hashes = self.kind, self.hashes
        profile = profile_of(hashes[3])
        base_mscore = base_mscore_of(hashes[2])
        mscore = rev.mscore if rev is not None and rev.mscore is not None else base_mscore
        value = self._value()
        record_id = indicator_id(seed, i, kind)
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
        if has_threat_rating_of(hashes[4]):
            if rev is not None and rev.threat_score is not None:
                score = rev.threat_score
            else:
                score = base_threat_score_of(hashes[5], base_mscore, profile)
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
            first -= 1 + self.below(3 * DAY_MS - 1)
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
        words = rng.sample_k(WORDS, 1 + below(2))
        return f"{'-'.join(words)}-{_base36(self.i)}{self.seed % 97}.{TLDS[below(12)]}"

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
        path = URL_PATHS[below(6)]
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
            day, rest = divmod(last, DAY_MS)
            last_text = (
                f"{day_prefix(day)}{HH_MM[rest // 60_000]}{SS[rest // 1000 % 60]}"
                f"{MSS[rest % 1000]}+0000"
            )
            if first == last:
                first_text = last_text
            else:
                day, rest = divmod(first, DAY_MS)
                first_text = (
                    f"{day_prefix(day)}{HH_MM[rest // 60_000]}{SS[rest // 1000 % 60]}"
                    f"{MSS[rest % 1000]}+0000"
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
        if rev is not None and rev.osint_only:
            for source in sources:
                source["osint"] = True
        return sources

    # -- optional blocks ---------------------------------------------------------------

    def _hashes(self, md5_id: str, md5: str) -> list[dict[str, str]]:
        out = [{"id": md5_id, "type": "md5", "value": md5}]
        for kind in ("sha1", "sha256"):
            if self.rand() < 0.85:
                value = _digest(kind, self.seed, self.i)
                out.append(
                    {"id": f"{kind}--{uuid5_of(f'{kind}/{value}')}", "type": kind, "value": value}
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
            out.append({"id": f"threat-actor--{uuid5(name)}", "name": name, "type": "threat-actor"})
        if not out or rand() < 0.6:
            name = MALWARE[below(len(MALWARE))]
            out.append({"id": f"malware--{uuid5(name)}", "name": name, "type": "malware"})
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
            {"id": f"campaign--{uuid5(name)}", "name": name, "title": title}
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
            published = self.base_ts - DAY_MS - below(199 * DAY_MS)
            out.append(
                {
                    "id": f"report--{uuid5_of(f'report/{number}')}",
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
