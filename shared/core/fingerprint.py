"""The seen-cache decision (DESIGN §4): upload what is new or changed, refresh what would
otherwise expire, and skip the rest.

The fingerprint covers exactly what Sentinel would store apart from the timestamps every upload
moves, so an unchanged indicator is not re-uploaded on each sync while any change of pattern,
labels, confidence or description is. It is also written into the STIX object itself (in our
property extension, ``EXTENSION_ID``), so the cache can be rebuilt from the workspace.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

import orjson

#: The STIX 2.1 property extension every indicator we upload carries MATI's id and threat
#: score and the fingerprint in, instead of top-level ``x_`` properties (Sentinel keeps unknown
#: extension properties without indexing them). Its id is
#: ``uuid5(shared.core.stix.NAMESPACE, "mati2sentinel/mati-properties")``, written out because
#: ``shared.core.stix`` imports this module; tests pin both. Never change it: objects already in a
#: workspace would no longer be recognised as ours.
EXTENSION_ID: Final = "extension-definition--8b329901-f0cd-573b-8581-99c3f0668664"
#: The property of that extension that carries the fingerprint.
FINGERPRINT_PROPERTY: Final = "fingerprint"
#: Properties every upload changes; they never count as content (nor does the fingerprint).
VOLATILE_PROPERTIES: Final = frozenset({"created", "modified", "valid_from", "valid_until"})
#: 128 bits: collisions are out of reach for any feed size, and a Redis value stays small.
_DIGEST_BYTES: Final = 16
_FINGERPRINT: Final = re.compile(rf"[0-9a-f]{{{2 * _DIGEST_BYTES}}}")
#: A source tag (``shared.core.source_tag``): 64 bits tell versions of one record apart.
SOURCE_TAG_BYTES: Final = 8
#: The stored entry: a format letter, then fingerprint, source tag and ``valid_until`` in epoch
#: ms in base64url. 44 ASCII bytes: Redis keeps it inside the value's object (an "embstr", up
#: to 44 bytes), and clients that decode responses as text still read it.
_LAYOUT: Final = struct.Struct(f">{_DIGEST_BYTES}s{SOURCE_TAG_BYTES}sq")
#: The int64 field holds ``valid_until`` in its low 48 bits (enough past year 9999), the
#: revocation generation in bits 48..61 and "revoked" in bit 62. Entries written before
#: revocation existed have those bits clear, so they read as generation 0, not revoked, and the
#: format letter stays: no upgrade re-uploads anything. A negative field (a ``valid_until``
#: before 1970, which only tests write) is plain milliseconds, as it always was.
_MILLIS_BITS: Final = 48
_MILLIS_MASK: Final = (1 << _MILLIS_BITS) - 1
_GENERATION_BITS: Final = 14
#: The highest revocation generation an entry can record.
MAX_GENERATION: Final = (1 << _GENERATION_BITS) - 1
_REVOKED_BIT: Final = 1 << 62
_FORMAT: Final = b"1"
_ENCODED: Final = re.compile(rb"1[A-Za-z0-9_-]{43}")
_NO_TAG: Final = bytes(SOURCE_TAG_BYTES)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


class ForwardReason(StrEnum):
    """Why the filter forwards an indicator; each value is a metric label."""

    NEW = "new"
    CHANGED = "changed"
    REFRESH = "refresh"
    #: The workspace holds the object and the record no longer passes: re-uploaded revoked.
    REVOKE = "revoke"


def fingerprint(content: Mapping[str, object]) -> str:
    """32 hex digits over the canonical JSON of ``content`` minus ``VOLATILE_PROPERTIES`` and
    minus the fingerprint in our extension.

    Accepts either the bare content or a whole STIX object (even one carrying its own
    fingerprint), so the value recomputed from an object read back from Sentinel matches.
    """
    stable = {key: value for key, value in content.items() if key not in VOLATILE_PROPERTIES}
    extensions = stable.get("extensions")
    if isinstance(extensions, Mapping):
        ours = extensions.get(EXTENSION_ID)
        if isinstance(ours, Mapping) and FINGERPRINT_PROPERTY in ours:
            # The fingerprint never covers itself.
            bare = {key: value for key, value in ours.items() if key != FINGERPRINT_PROPERTY}
            stable["extensions"] = {**extensions, EXTENSION_ID: bare}
    canonical = orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=_DIGEST_BYTES).hexdigest()


@dataclass(frozen=True, slots=True)
class SeenEntry:
    """What the seen cache keeps per STIX id: the fingerprint uploaded, the ``valid_until``
    it was uploaded with (millisecond precision once encoded, like STIX timestamps), and the
    source tag of the raw record it was decided from (empty when unknown), which lets the
    filter recognise a record it already judged without parsing it again.

    ``revoked`` says the object was last uploaded with ``revoked: true``; ``generation`` is how
    many times the lineage was revoked and published again (STIX forbids un-revoking an id, so
    each publication after a revocation goes out under a new id, see
    ``shared.core.stix.stix_id``). The entry stays keyed by the generation-0 id."""

    fingerprint: str
    valid_until: datetime
    source: bytes = b""
    revoked: bool = False
    generation: int = 0

    def __post_init__(self) -> None:
        # Checked here so that every entry that can be built can also be decoded again.
        if _FINGERPRINT.fullmatch(self.fingerprint) is None:
            raise ValueError("fingerprint must be 32 lower-case hex digits")
        if self.valid_until.utcoffset() is None:
            raise ValueError("valid_until must be an aware datetime")
        if len(self.source) not in (0, SOURCE_TAG_BYTES):
            raise ValueError(f"source must be empty or {SOURCE_TAG_BYTES} bytes")
        if not 0 <= self.generation <= MAX_GENERATION:
            raise ValueError(f"generation must be within 0..{MAX_GENERATION}")
        if (self.revoked or self.generation) and self.valid_until < _EPOCH:
            raise ValueError("a revoked or later-generation entry needs valid_until after 1970")

    def live(self, now: datetime) -> bool:
        """Whether the workspace holds the object as a live indicator at ``now``: uploaded,
        not revoked, not expired. Only such an object needs revoking."""
        return not self.revoked and self.valid_until > now

    def next_generation(self) -> int:
        """The generation an upload of this lineage goes out under: a revoked id is never
        published again, so a revoked entry moves on to the next one."""
        return min(self.generation + 1, MAX_GENERATION) if self.revoked else self.generation

    def encode(self) -> bytes:
        """The 44-byte layout above. An unknown source is stored as zeros, which decode as
        unknown again: such an entry never matches a tag (the filter's full path runs)."""
        millis = (self.valid_until - _EPOCH) // _MILLISECOND
        if millis >= 0:
            millis |= self.generation << _MILLIS_BITS
            if self.revoked:
                millis |= _REVOKED_BIT
        packed = _LAYOUT.pack(bytes.fromhex(self.fingerprint), self.source or _NO_TAG, millis)
        return _FORMAT + base64.urlsafe_b64encode(packed).rstrip(b"=")

    @classmethod
    def decode(cls, data: bytes) -> SeenEntry | None:
        """The entry ``encode`` wrote, or ``None`` for anything else: a garbled or foreign
        value then reads as "not seen", which costs one re-upload, never a lost indicator."""
        if _ENCODED.fullmatch(data) is None:
            return None
        packed = base64.urlsafe_b64decode(data[1:] + b"=")
        digest, source, field = _LAYOUT.unpack(packed)
        millis, generation, revoked = field, 0, False
        if field >= 0:
            millis = field & _MILLIS_MASK
            generation = (field >> _MILLIS_BITS) & MAX_GENERATION
            revoked = bool(field & _REVOKED_BIT)
        try:
            valid_until = _EPOCH + millis * _MILLISECOND
        except OverflowError:
            return None
        tag = b"" if source == _NO_TAG else source
        return cls(digest.hex(), valid_until, tag, revoked, generation)


def decide(
    seen: SeenEntry | None,
    fingerprint: str,
    now: datetime,
    valid_until_if_uploaded: datetime,
    refresh_after: timedelta,
) -> ForwardReason | None:
    """Whether to forward an accepted indicator, and why; ``None`` means "unchanged, drop".

    An entry whose ``valid_until`` has passed counts as ``NEW``: Sentinel no longer matches on
    that indicator, whatever the cache says; so does a revoked one (it goes out again under
    the next generation's id). ``REFRESH`` fires when uploading now would push
    ``valid_until`` out by at least ``refresh_after``: still-reported indicators stay valid
    in Sentinel (the vendor's v1.2.2 problem) without re-uploading 90-day hashes every sync.
    """
    if seen is None or seen.revoked or seen.valid_until <= now:
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
