"""The seen-cache decision (DESIGN §4): upload what is new or changed, refresh what would
otherwise expire, and skip the rest.

The fingerprint covers exactly what Sentinel would store apart from the timestamps every upload
moves, so an unchanged indicator is not re-uploaded on each sync while any change of pattern,
labels, confidence or description is. It is also written into the STIX object itself, so the
cache can be rebuilt from the workspace.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

import orjson

#: The custom STIX property that carries the fingerprint.
FINGERPRINT_PROPERTY: Final = "x_mati2sentinel_fingerprint"
#: Properties every upload changes (or that derive from the rest); they never count as content.
VOLATILE_PROPERTIES: Final = frozenset(
    {"created", "modified", "valid_from", "valid_until", FINGERPRINT_PROPERTY}
)
#: 128 bits: collisions are out of reach for any feed size, and a Redis value stays small.
_DIGEST_BYTES: Final = 16
_FINGERPRINT: Final = re.compile(rf"[0-9a-f]{{{2 * _DIGEST_BYTES}}}")
_ENCODED: Final = re.compile(rb"([0-9a-f]{%d}):(-?[0-9]{1,15})" % (2 * _DIGEST_BYTES))
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


class ForwardReason(StrEnum):
    """Why the filter forwards an indicator; each value is a metric label."""

    NEW = "new"
    CHANGED = "changed"
    REFRESH = "refresh"


def fingerprint(content: Mapping[str, object]) -> str:
    """32 hex digits over the canonical JSON of ``content`` minus ``VOLATILE_PROPERTIES``.

    Accepts either the bare content or a whole STIX object (even one carrying its own
    fingerprint), so the value recomputed from an object read back from Sentinel matches.
    """
    stable = {key: value for key, value in content.items() if key not in VOLATILE_PROPERTIES}
    canonical = orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=_DIGEST_BYTES).hexdigest()


@dataclass(frozen=True, slots=True)
class SeenEntry:
    """What the seen cache keeps per STIX id: the fingerprint uploaded and the ``valid_until``
    it was uploaded with (millisecond precision once encoded, like STIX timestamps)."""

    fingerprint: str
    valid_until: datetime

    def __post_init__(self) -> None:
        # Checked here so that every entry that can be built can also be decoded again.
        if _FINGERPRINT.fullmatch(self.fingerprint) is None:
            raise ValueError("fingerprint must be 32 lower-case hex digits")
        if self.valid_until.utcoffset() is None:
            raise ValueError("valid_until must be an aware datetime")

    def encode(self) -> bytes:
        """``<fingerprint>:<valid_until in epoch milliseconds>``, 46 bytes today."""
        millis = (self.valid_until - _EPOCH) // _MILLISECOND
        return b"%s:%d" % (self.fingerprint.encode("ascii"), millis)

    @classmethod
    def decode(cls, data: bytes) -> SeenEntry | None:
        """The entry ``encode`` wrote, or ``None`` for anything else: a garbled or foreign
        value then reads as "not seen", which costs one re-upload, never a lost indicator."""
        match = _ENCODED.fullmatch(data)
        if match is None:
            return None
        digest, millis = match.groups()
        try:
            valid_until = _EPOCH + int(millis) * _MILLISECOND
        except OverflowError:
            return None
        return cls(digest.decode("ascii"), valid_until)


def decide(
    seen: SeenEntry | None,
    fingerprint: str,
    now: datetime,
    valid_until_if_uploaded: datetime,
    refresh_after: timedelta,
) -> ForwardReason | None:
    """Whether to forward an accepted indicator, and why; ``None`` means "unchanged, drop".

    An entry whose ``valid_until`` has passed counts as ``NEW``: Sentinel no longer matches on
    that indicator, whatever the cache says. ``REFRESH`` fires when uploading now would push
    ``valid_until`` out by at least ``refresh_after``: still-reported indicators stay valid
    in Sentinel (the vendor's v1.2.2 problem) without re-uploading 90-day hashes every sync.
    """
    if seen is None or seen.valid_until <= now:
        return ForwardReason.NEW
    if seen.fingerprint != fingerprint:
        return ForwardReason.CHANGED
    if valid_until_if_uploaded - seen.valid_until >= refresh_after:
        return ForwardReason.REFRESH
    return None


def refresh_after_for(expiration: timedelta, ratio: float) -> timedelta:
    """The refresh threshold for a type whose uploads expire after ``expiration``.

    ``ratio`` is the fraction of the validity that may elapse before a re-upload; it must lie
    in 0..1 (above 1 an indicator could expire in Sentinel before it is refreshed).
    """
    if expiration <= timedelta(0):
        raise ValueError(f"expiration must be positive, got {expiration}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be within 0..1, got {ratio}")
    return expiration * ratio
