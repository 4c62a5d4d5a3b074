"""Observables to STIX 2.1 indicators, and STIX indicators to Sentinel upload bodies.

Everything here is deterministic given the observable, the policy and ``now``: the same MATI
indicator always maps to the same STIX id (so a repeated upload updates, never duplicates) and
the same content (so its fingerprint only moves when something Sentinel stores moved).
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final
from urllib.parse import quote

from shared.core.filters import Observable, ObservableKind
from shared.core.fingerprint import EXTENSION_ID, FINGERPRINT_PROPERTY, fingerprint
from shared.core.indicator import HashType, Indicator
from shared.core.parsing import format_timestamp

#: The uuid5 namespace of every STIX id we mint. Changing it re-keys every indicator: the
#: next sync would upload each one again under a new id, next to the old one, in every
#: workspace. Never change it.
NAMESPACE: Final = uuid.UUID("1d560667-65d4-4cea-95f3-a08aad09ffae")
_NAMESPACE_BYTES: Final = NAMESPACE.bytes

#: Our one STIX property extension is ``EXTENSION_ID`` (``shared.core.fingerprint``), that is
#: ``extension-definition--`` + uuid5(NAMESPACE, EXTENSION_NAME). It carries MATI's id
#: (``mati_id``), its threat score (``threat_score``, when MATI rates it) and our fingerprint
#: (``fingerprint``, added when stamped). Product data lives there, not in top-level ``x_``
#: properties; Sentinel keeps extension properties without indexing them (sentinel-and-entra
#: §2.2).
EXTENSION_NAME: Final = "mati2sentinel/mati-properties"
MATI_ID_PROPERTY: Final = "mati_id"
THREAT_SCORE_PROPERTY: Final = "threat_score"
#: On a revocation ``suppress add`` caused: the suppression (value, type, reason, added_at),
#: so a seen cache rebuilt from the workspace after a lost Redis brings the suppression back.
SUPPRESSED_PROPERTY: Final = "suppressed"

#: Sentinel's limits per upload request and on ``sourcesystem`` (sentinel-and-entra §2.2, §2.3).
MAX_OBJECTS_PER_REQUEST: Final = 100
MAX_SOURCE_SYSTEM_CHARS: Final = 256
RESERVED_SOURCE_SYSTEM: Final = "Microsoft Sentinel"

MANDIANT_URL: Final = "https://advantage.mandiant.com/indicator/"
PASSIVE_ONLY_LABEL: Final = "passive-only"
#: How much of a value an indicator's ``name`` shows; the full value is in the pattern.
MAX_NAME_VALUE_CHARS: Final = 100

# Left-hand sides of the only patterns we emit: one comparison each, because Sentinel extracts
# no observable from AND/OR patterns. Hash names are the STIX hash-algorithm-ov spellings,
# quoted because ``-`` is not allowed in a bare path step.
_OBJECT_PATHS: Final[dict[tuple[ObservableKind, HashType | None], str]] = {
    (ObservableKind.IPV4, None): "ipv4-addr:value",
    (ObservableKind.FQDN, None): "domain-name:value",
    (ObservableKind.URL, None): "url:value",
    (ObservableKind.HASH, HashType.MD5): "file:hashes.'MD5'",
    (ObservableKind.HASH, HashType.SHA1): "file:hashes.'SHA-1'",
    (ObservableKind.HASH, HashType.SHA256): "file:hashes.'SHA-256'",
}


class DefaultAction(StrEnum):
    """``DEFAULT_ACTION`` values; carried as an ``action:<value>`` label for playbooks."""

    ALERT = "alert"
    BLOCK = "block"
    ALLOW = "allow"


class SentinelApi(StrEnum):
    """The two upload APIs; they differ in the body key that holds the objects."""

    STIX_OBJECTS = "stix-objects"
    UPLOAD_INDICATORS = "upload-indicators"


_BODY_KEYS: Final = {
    SentinelApi.STIX_OBJECTS: "stixobjects",
    SentinelApi.UPLOAD_INDICATORS: "value",
}


@dataclass(frozen=True, slots=True)
class StixPolicy:
    """How a destination's indicators look in Sentinel; defaults are the seed's."""

    ipv4_expiration: timedelta = timedelta(days=7)
    fqdn_expiration: timedelta = timedelta(days=7)
    url_expiration: timedelta = timedelta(days=7)
    hash_expiration: timedelta = timedelta(days=90)
    default_action: str = DefaultAction.ALERT.value
    passive_only: bool = False

    def __post_init__(self) -> None:
        if self.default_action not in {action.value for action in DefaultAction}:
            raise ValueError(
                f"default_action must be one of {', '.join(DefaultAction)}, "
                f"got {self.default_action!r}"
            )
        for kind in ObservableKind:
            # STIX timestamps carry milliseconds; anything shorter would make valid_until equal
            # valid_from, which Sentinel and STIX refuse.
            if self.expiration_of(kind) < timedelta(milliseconds=1):
                raise ValueError(f"{kind} expiration must be at least 1 ms")

    def expiration_for(self, observable: Observable) -> timedelta:
        return self.expiration_of(observable.kind)

    def expiration_of(self, kind: ObservableKind) -> timedelta:
        return {
            ObservableKind.IPV4: self.ipv4_expiration,
            ObservableKind.FQDN: self.fqdn_expiration,
            ObservableKind.URL: self.url_expiration,
            ObservableKind.HASH: self.hash_expiration,
        }[kind]


@functools.lru_cache(maxsize=4096)
def stix_id(mati_id: str, hash_type: HashType | None, generation: int = 0) -> str:
    """``indicator--uuid5(NAMESPACE, mati_id[:hash_type][#generation])``: stable across runs,
    replicas and workspaces, and distinct per hash of one md5 indicator (``HASH_TYPE=all``).

    ``generation`` counts how often the observable was revoked and then passed again: STIX 2.1
    forbids un-revoking an object, so each publication after a revocation needs an id of its
    own, still derived, never random. Generation 0 (everything never revoked) is the id every
    earlier version minted; it names the lineage in the seen cache and in claims.

    Cached for the records in hand: the filter derives each id twice, once predicted from
    the message's properties (``shared.core.source_tag``), once from the parsed record."""
    name = mati_id if hash_type is None else f"{mati_id}:{hash_type}"
    if generation:
        name = f"{name}#{generation}"
    # ``uuid.uuid5`` byte for byte (tests pin it), without building a UUID object.
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).digest()
    version = ((digest[6] & 0x0F) | 0x50).to_bytes()  # version 5
    variant = ((digest[8] & 0x3F) | 0x80).to_bytes()  # RFC 4122 variant
    h = (digest[:6] + version + digest[7:8] + variant + digest[9:16]).hex()
    return f"indicator--{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def escape(value: str) -> str:
    """A STIX string literal body: backslashes first, then quotes (the grammar has no other
    escapes, so every other character, control characters included, stays as it is)."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def unescape(literal: str) -> str:
    """The inverse of ``escape``; raises ValueError on text ``escape`` cannot produce."""
    out: list[str] = []
    chars = iter(literal)
    for char in chars:
        if char == "'":
            raise ValueError("unescaped quote in STIX string literal")
        if char == "\\":
            char = next(chars, "")
            if char not in ("\\", "'"):
                raise ValueError("invalid escape in STIX string literal")
        out.append(char)
    return "".join(out)


def pattern(observable: Observable) -> str:
    path = _OBJECT_PATHS[(observable.kind, observable.hash_type)]
    return f"[{path} = '{escape(observable.value)}']"


def labels(observable: Observable, policy: StixPolicy) -> list[str]:
    """Sentinel shows labels as tags: categories, attributed actors and malware, and the
    destination's action settings for playbooks. Sorted so the fingerprint is stable."""
    indicator = observable.indicator
    found = {*indicator.categories, *indicator.actors, *indicator.malware}
    found.add(f"action:{policy.default_action}")
    if policy.passive_only:
        found.add(PASSIVE_ONLY_LABEL)
    return sorted(found)


def content(
    observable: Observable, policy: StixPolicy, *, object_id: str | None = None
) -> dict[str, object]:
    """The STIX indicator without the timestamps each upload moves; what the fingerprint
    covers. ``object_id`` is the observable's ``stix_id`` when the caller already has it
    (and checked it against the record): the uuid5 is then not derived a second time."""
    indicator = observable.indicator
    body: dict[str, object] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": object_id or stix_id(indicator.id, observable.hash_type),
        "name": _name(observable),
        "description": _description(observable),
        "indicator_types": ["malicious-activity"],
        "pattern": pattern(observable),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "labels": labels(observable, policy),
        "external_references": [
            {
                "source_name": "Mandiant",
                "external_id": indicator.id,
                "url": MANDIANT_URL + quote(indicator.id, safe=""),
            }
        ],
    }
    if indicator.mscore is not None:
        body["confidence"] = indicator.mscore
    ours: dict[str, object] = {
        "extension_type": "property-extension",
        MATI_ID_PROPERTY: indicator.id,
    }
    if indicator.threat_score is not None:
        ours[THREAT_SCORE_PROPERTY] = indicator.threat_score
    body["extensions"] = {EXTENSION_ID: ours}
    return body


def _mapping(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, Mapping) else {}


def extension_of(obj: Mapping[str, object]) -> Mapping[str, object] | None:
    """Our property extension of ``obj`` (a STIX object, or its content), if it has one."""
    extensions = obj.get("extensions")
    if isinstance(extensions, Mapping):
        ours = extensions.get(EXTENSION_ID)
        if isinstance(ours, Mapping):
            return ours
    return None


def stamped_extensions(body: Mapping[str, object], fingerprint: str) -> dict[str, object]:
    """``body``'s ``extensions`` with ``fingerprint`` written into ours (made if missing)."""
    extensions = body.get("extensions")
    others = dict(extensions) if isinstance(extensions, Mapping) else {}
    ours = extension_of(body) or {"extension_type": "property-extension"}
    others[EXTENSION_ID] = {**ours, FINGERPRINT_PROPERTY: fingerprint}
    return others


def indicator_object(
    observable: Observable, policy: StixPolicy, now: datetime
) -> dict[str, object]:
    """The STIX 2.1 indicator to upload at ``now`` (an aware datetime).

    ``valid_from`` is the upload time and ``valid_until`` that plus the type's expiration, so
    an indicator stays valid for a full period after MATI last reported it. ``created`` comes
    from MATI's first sighting so it stays put across uploads of one id, and is clamped to
    ``modified`` so clock skew cannot make the object invalid.
    """
    return Draft.of(observable, policy).at(UploadTime(now))[0]


class UploadTime:
    """One upload instant and its STIX timestamps, formatted once: every object of a request
    shares ``modified``/``valid_from``, and every object of one expiration its ``valid_until``
    (an uploader builds 100 objects per request, and again on each retry)."""

    __slots__ = ("_until", "now", "text")

    def __init__(self, now: datetime) -> None:
        self.text = format_timestamp(now)  # ValueError for a naive ``now``
        self.now = now
        self._until: dict[timedelta, tuple[str, datetime]] = {}

    def valid_until(self, expiration: timedelta) -> tuple[str, datetime]:
        """``now + expiration`` as the STIX timestamp and as the instant that timestamp reads
        back as (milliseconds, truncated): what Sentinel stores, so what the seen cache keeps,
        without parsing our own text back."""
        found = self._until.get(expiration)
        if found is None:
            moment = (self.now + expiration).astimezone(UTC)
            truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
            found = self._until[expiration] = (format_timestamp(moment), truncated)
        return found


@dataclass(frozen=True, slots=True)
class Draft:
    """Everything of one observable's STIX object that does not depend on the upload time:
    made once per indicator by the filter, which fingerprints it, carried on the upload
    message, and stamped (``at``) by the uploader once per request that carries it. What is
    uploaded is therefore exactly what was fingerprinted, whichever versions run where (but
    for a version-2 message of an older filter, see ``shared.contract.messages``).

    ``extensions`` is the body's, with the fingerprint written into ours: made once per
    draft, so stamping copies no more than the top level of the body."""

    body: dict[str, object]
    fingerprint: str
    expiration: timedelta
    first_known: datetime | None
    created: str | None
    extensions: dict[str, object]

    @classmethod
    def of(
        cls, observable: Observable, policy: StixPolicy, *, object_id: str | None = None
    ) -> Draft:
        body = content(observable, policy, object_id=object_id)
        return cls.known(
            body,
            fingerprint(body),
            policy.expiration_for(observable),
            _first_known(observable.indicator),
        )

    @classmethod
    def known(
        cls,
        body: dict[str, object],
        fingerprint: str,
        expiration: timedelta,
        first_known: datetime | None,
    ) -> Draft:
        """A draft from its parts (as an upload message carries them)."""
        created = None if first_known is None else format_timestamp(first_known)
        extensions = stamped_extensions(body, fingerprint)
        return cls(body, fingerprint, expiration, first_known, created, extensions)

    @property
    def stix_id(self) -> str:
        return str(self.body["id"])

    @property
    def revoked(self) -> bool:
        return self.body.get("revoked") is True

    def reissued(
        self,
        object_id: str,
        *,
        revoked: bool = False,
        properties: Mapping[str, object] | None = None,
    ) -> Draft:
        """This draft under another id (a later generation), and revoked if asked, with
        ``properties`` added to our extension (a suppression's description, so the workspace
        remembers it): a new fingerprint, since all of it is content Sentinel stores."""
        body = {key: value for key, value in self.body.items() if key != "revoked"}
        body["id"] = object_id
        if revoked:
            body["revoked"] = True
        if properties:
            ours = {**(extension_of(body) or {}), **properties}
            body["extensions"] = {**_mapping(body.get("extensions")), EXTENSION_ID: ours}
        return Draft.known(body, fingerprint(body), self.expiration, self.first_known)

    def at(self, time: UploadTime) -> tuple[dict[str, object], datetime]:
        """The object to upload at ``time`` (``indicator_object``) and its ``valid_until`` as
        Sentinel will store it."""
        until_text, until = time.valid_until(self.expiration)
        first = self.first_known
        # created = min(first sighting, now): a first sighting "in the future" is clock skew.
        created = self.created if first is not None and first < time.now else time.text
        return {
            **self.body,
            "created": created,
            "modified": time.text,
            "valid_from": time.text,
            "valid_until": until_text,
            "extensions": self.extensions,
        }, until


def check_source_system(name: str) -> str | None:
    """The problem with ``name`` as Sentinel's ``sourcesystem``, or ``None`` if it is usable."""
    if not name.strip():
        return "source system must not be empty"
    if len(name) > MAX_SOURCE_SYSTEM_CHARS:
        return f"source system must be at most {MAX_SOURCE_SYSTEM_CHARS} characters"
    if name.strip().casefold() == RESERVED_SOURCE_SYSTEM.casefold():
        return f"source system {RESERVED_SOURCE_SYSTEM!r} is reserved by Sentinel"
    return None


def upload_body(
    api: SentinelApi, source_system: str, objects: Sequence[Mapping[str, object]]
) -> dict[str, object]:
    """The JSON body of one upload request; raises ValueError on a request Sentinel would
    refuse as a whole (bad ``sourcesystem``, no objects, more than 100)."""
    problem = check_source_system(source_system)
    if problem is not None:
        raise ValueError(problem)
    if not 1 <= len(objects) <= MAX_OBJECTS_PER_REQUEST:
        raise ValueError(
            f"an upload holds 1..{MAX_OBJECTS_PER_REQUEST} objects, got {len(objects)}"
        )
    # Plain dicts go as they are (no copy per object); other mappings become dicts for orjson.
    listed = [obj if type(obj) is dict else dict(obj) for obj in objects]
    return {"sourcesystem": source_system, _BODY_KEYS[api]: listed}


def _first_known(indicator: Indicator) -> datetime | None:
    """MATI's earliest sighting, else its last update: the most stable ``created`` we have."""
    if indicator.first_seen is not None:
        return indicator.first_seen
    sightings = [s.first_seen for s in indicator.sources if s.first_seen is not None]
    return min(sightings) if sightings else indicator.last_updated


def _name(observable: Observable) -> str:
    label = observable.hash_type or observable.kind
    value = observable.value
    if len(value) > MAX_NAME_VALUE_CHARS:
        value = value[: MAX_NAME_VALUE_CHARS - 1] + "…"
    return f"MATI {label} {value}"


def _description(observable: Observable) -> str:
    indicator = observable.indicator
    parts = [f"Mandiant Advantage Threat Intelligence {indicator.type} indicator {indicator.id}"]
    if indicator.mscore is not None:
        parts.append(f"IC-Score {indicator.mscore}")
    if indicator.threat_score is not None:
        parts.append(f"threat score {indicator.threat_score}")
    for title, names in (
        ("categories", indicator.categories),
        ("threat actors", indicator.actors),
        ("malware", indicator.malware),
        ("campaigns", indicator.campaigns),
    ):
        if names:
            parts.append(f"{title}: {', '.join(names)}")
    return "; ".join(parts) + "."
