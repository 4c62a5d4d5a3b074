"""What indicator ``i`` of a feed is, as a pure function of ``(seed, i)``.

The fields a server filters on (``type``, ``mscore``, threat score, "OSINT only") each come
from a cheap integer hash of ``(seed, i)``, not from building the record, so the MATI simulator
can evaluate a 300k window without rendering 300k dicts. The ``Feed`` and the record builder
both derive them from here, so a window and the records in it can never disagree.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import dataclass

_MASK = (1 << 64) - 1

#: Namespace of every uuid5 the feed mints; fixed so ids are stable across runs and machines.
NAMESPACE = uuid.UUID("5b0b6a0e-2f4c-4f51-9a57-6d1a8f0c7e11")
_NS_BYTES = NAMESPACE.bytes


def mix(seed: int, i: int, salt: int) -> int:
    """splitmix64 of (seed, i, salt): the cheap, well-spread hash every attribute derives from."""
    z = (
        seed * 0x9E3779B97F4A7C15 + (i + 1) * 0xD1B54A32D192ED03 + salt * 0x94D049BB133111EB
    ) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


#: The salts of the per-record hashes, in the order ``mixes`` returns them.
_SALTS = (99, 1, 2, 3, 4, 5, 11)
_SALTED = tuple(salt * 0x94D049BB133111EB for salt in _SALTS)


def mixes(seed: int, i: int) -> list[int]:
    """``[mix(seed, i, salt) for salt in _SALTS]``, sharing the common part (every record
    needs all seven: its generator seed, type, mscore, profile, rating, threat, jitter)."""
    common = seed * 0x9E3779B97F4A7C15 + (i + 1) * 0xD1B54A32D192ED03
    out = []
    for salted in _SALTED:
        z = (common + salted) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        out.append(z ^ (z >> 31))
    return out


def kind_at(seed: int, i: int) -> str:
    return kind_of(mix(seed, i, 1))


def kind_of(u1: int) -> str:
    u = u1 % 100
    if u < 35:
        return "ipv4"
    if u < 60:
        return "fqdn"
    if u < 80:
        return "url"
    return "md5"


def base_mscore_at(seed: int, i: int) -> int:
    return base_mscore_of(mix(seed, i, 2))


def base_mscore_of(u: int) -> int:
    bucket = u % 100
    if bucket < 45:  # known malicious
        return 80 + (u >> 8) % 21
    if bucket < 55:  # every indicator starts at 50 (§5.4)
        return 50
    return (u >> 8) % 80


def profile_at(seed: int, i: int) -> str:
    """Who reported it: ``mandiant`` only, ``both`` or ``osint`` only."""
    return profile_of(mix(seed, i, 3))


def profile_of(u3: int) -> str:
    u = u3 % 100
    if u < 45:
        return "mandiant"
    if u < 75:
        return "both"
    return "osint"


def has_threat_rating_at(seed: int, i: int) -> bool:
    return has_threat_rating_of(mix(seed, i, 4))


def has_threat_rating_of(u4: int) -> bool:
    return u4 % 100 < 85


def base_threat_score_at(seed: int, i: int, base_mscore: int, profile: str) -> int:
    return base_threat_score_of(mix(seed, i, 5), base_mscore, profile)


def base_threat_score_of(u5: int, base_mscore: int, profile: str) -> int:
    score = base_mscore - 30 + u5 % 41
    if profile == "osint":
        score -= 15
    return max(0, min(100, score))


def indicator_id(seed: int, i: int, kind: str) -> str:
    """``<type>--<uuid5>``: stable per (seed, index)."""
    return f"{kind}--{uuid5_of(f'{seed}/{i}/{kind}')}"


#: The hex digit of a uuid's variant nibble (RFC 4122: ``10xx``) for each hex digit of the hash.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid5_of(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))`` without the UUID object (hot path: every id)."""
    x = hashlib.sha1(_NS_BYTES + name.encode(), usedforsecurity=False).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


#: The same, remembered: for the few names that recur (actors, malware, campaigns). Names
#: unique to one record (indicator and hash ids) skip the cache, where they would only churn it.
uuid5 = functools.lru_cache(maxsize=1024)(uuid5_of)


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of indexes whose base timestamps spread over ``[start_ms, start_ms + span_ms)``."""

    first: int
    n: int
    start_ms: int
    span_ms: int

    def ts(self, seed: int, i: int) -> int:
        return self.ts_of(i, mix(seed, i, 11))

    def ts_of(self, i: int, u11: int) -> int:
        """``ts`` given ``mix(seed, i, 11)``."""
        k = i - self.first
        gap = self.span_ms // self.n
        # Jitter stays inside the index's own slot, so timestamps never cross: strictly
        # ascending whenever the slot is at least a millisecond wide.
        jitter = u11 % gap if gap > 1 else 0
        return self.start_ms + (k * self.span_ms) // self.n + jitter

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.span_ms
