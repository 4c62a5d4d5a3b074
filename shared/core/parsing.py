"""MATI wire format to the indicator model; nothing here raises on input.

Bad input must never crash a loop and never vanish (DESIGN §4), so every problem is returned as
a ``Rejection`` the caller counts and dead-letters. Only ``id``, ``type`` and ``value`` are
required (mati-api-v4 §11); every other field is optional and read leniently: a wrongly typed
optional field is ignored rather than costing us the whole indicator, but it never turns into a
value that would pass a filter it should not (a non-numeric ``mscore`` becomes ``None``, which
fails any non-zero minimum).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

import orjson

from shared.core.indicator import Association, HashType, Indicator, IndicatorType, Source

# The bounds' names that callers have always imported from here are re-exported ("as").
from shared.core.record_bounds import MAX_DETAIL_CHARS as MAX_DETAIL_CHARS
from shared.core.record_bounds import MAX_ID_CHARS as MAX_ID_CHARS
from shared.core.record_bounds import MAX_VALUE_CHARS as MAX_VALUE_CHARS
from shared.core.record_bounds import Rejection as Rejection
from shared.core.record_bounds import RejectReason as RejectReason
from shared.core.record_bounds import clip, read_stand_in, text_problem

#: How much of an offending value a detail quotes.
_MAX_QUOTE_CHARS: Final = 60
_JSON_NAMES: Final[dict[type, str]] = {
    dict: "object",
    list: "array",
    bool: "boolean",
    int: "number",
    float: "number",
}

#: Hex digits per hash type. Checked here because a malformed hash yields a STIX pattern that
#: the OASIS validator (and Sentinel) refuse; better one counted rejection than a poisoned batch.
HASH_HEX_DIGITS: Final = {HashType.MD5: 32, HashType.SHA1: 40, HashType.SHA256: 64}
_HEX: Final = re.compile(r"[0-9a-f]+")
#: A dotted-quad IPv4 address, or a CIDR block (STIX's ipv4-addr holds either). A leading zero
#: is refused: "010.0.0.1" is octal to some readers and decimal to others (Python's
#: ``ipaddress`` refuses it too); fqdn and url values are kept as MATI sends them, quotes and
#: backslashes included (the pattern escapes them), and Sentinel judges those per record.
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?[0-9]))?", re.ASCII)

# MATI mixes ``2025-03-09T08:02:44.617Z`` (indicator level) with ``...617+0000`` (sources) and
# ``...44Z`` (reports); RFC 3339's ``+00:00`` is accepted too. This pattern is the definition
# of a timestamp; ``datetime.fromisoformat`` alone is not, as it also takes bare dates, week
# dates, ``,`` fractions and offsets with seconds, which no MATI field carries.
_TIMESTAMP: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,
)
#: The shapes (``9`` for an ASCII digit) of the ``_TIMESTAMP`` strings that may go through
#: ``fromisoformat``: upper-case ``T`` and ``Z``, 0..9 fraction digits, ``+hhmm``/``+hh:mm``
#: offsets. On these, ``fromisoformat`` computes what the pattern path does (fraction
#: truncated to microseconds, offset minutes as given) or raises; it would also accept week
#: dates, ``,`` fractions, ``+hh`` or ``+hh:mm:ss`` offsets and any separator, hence the list.
_FAST_SHAPES: Final = frozenset(
    f"9999-99-99T99:99:99{fraction}{zone}".encode()
    for fraction in ("", *(f".{'9' * digits}" for digits in range(1, 10)))
    for zone in ("Z", "+9999", "-9999", "+99:99", "-99:99")
)
_DIGITS_AS_NINE: Final = bytes.maketrans(b"012345678", b"999999999")
_FROM_ISO: Final = datetime.fromisoformat
_STIX_TIME: Final = "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ"

#: Enum lookups by value without ``Enum.__call__``, which costs microseconds per record.
_TYPES: Final[dict[str, IndicatorType]] = {member.value: member for member in IndicatorType}
_HASH_TYPES: Final[dict[str, HashType]] = {member.value: member for member in HashType}
_HASH_ORDER: Final = tuple(HashType)


@dataclass(frozen=True, slots=True)
class Page:
    """One ``/v4/indicator`` page. Records stay raw: the fetcher publishes them untouched and
    the filter parses each one, so one bad record costs one record, never the page."""

    records: tuple[object, ...]
    next: str | None


def parse_json(body: bytes) -> object | Rejection:
    """Decode a JSON body. With duplicate keys the last one wins (orjson, like ``json``),
    which matches the one duplicated ``campaigns`` key seen in real MATI traffic."""
    try:
        document: object = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Rejection(RejectReason.INVALID_JSON, f"body is not JSON: {exc}")
    return document


def parse_page(body: bytes) -> Page | Rejection:
    """Read the ``{"indicators": [...], "next": "..."}`` envelope.

    A missing or wrongly typed ``indicators`` rejects the page (we cannot tell an empty page
    from a broken one). A ``next`` that is not a non-empty string means "last page". An empty
    body is invalid JSON: HTTP 204 must be handled by the client before calling this.
    """
    document = parse_json(body)
    if isinstance(document, Rejection):
        return document
    if not isinstance(document, dict):
        return Rejection(RejectReason.NOT_AN_OBJECT, f"page is {_describe(document)}")
    records = document.get("indicators")
    if records is None:
        return Rejection(RejectReason.MISSING_FIELD, "page has no 'indicators'")
    if not isinstance(records, list):
        return Rejection(
            RejectReason.BAD_FIELD, f"'indicators' must be a list, got {_describe(records)}"
        )
    cursor = document.get("next")
    return Page(tuple(records), cursor if isinstance(cursor, str) and cursor else None)


def parse_indicator(raw: object) -> Indicator | Rejection:
    """Turn one raw MATI record into an ``Indicator``.

    Values are normalised so equal indicators compare equal: ipv4, fqdn and md5 are stripped,
    fqdn and md5 lower-cased; an ipv4 must be a dotted quad, an md5 32 hex digits. URLs are
    kept byte for byte: case and whitespace can matter in a path. Unknown fields are ignored.
    A record larger or deeper than a message may carry arrives as the fetcher's stand-in and
    names that are too long are refused (``shared.core.record_bounds``).
    """
    if not isinstance(raw, dict):
        return Rejection(RejectReason.NOT_AN_OBJECT, f"record is {_describe(raw)}")
    indicator_id = raw.get("id")
    type_text = raw.get("type")
    value_text = raw.get("value")
    if not (
        isinstance(indicator_id, str)
        and isinstance(type_text, str)
        and isinstance(value_text, str)
        and indicator_id.strip()
        and type_text.strip()
        and value_text.strip()
    ):
        # Rare: a fetcher's stand-in for a record it could not publish, or a broken record
        # whose fields are walked in order, so the first problem is the one reported.
        refused = read_stand_in(raw)
        if refused is not None:
            return refused
        required = _required_fields(raw)
        if isinstance(required, Rejection):
            return required
        indicator_id, type_text, value_text = required
    kind = _TYPES.get(type_text.strip().lower())
    if kind is None:
        return Rejection(
            RejectReason.UNSUPPORTED_TYPE,
            f"type {_quote(type_text)} is not one of {', '.join(IndicatorType)}",
            indicator_id,
        )
    if len(value_text) > MAX_VALUE_CHARS:
        return Rejection(
            RejectReason.BAD_FIELD,
            f"{kind} value has {len(value_text)} characters, more than {MAX_VALUE_CHARS}",
            indicator_id,
        )
    value = _normalise_value(kind, value_text)
    if value is None:
        return Rejection(
            RejectReason.BAD_FIELD, f"{kind} value {_quote(value_text)} is malformed", indicator_id
        )
    indicator = _build(raw, indicator_id, kind, value)
    return text_problem(indicator) or indicator


def parse_timestamp(text: object) -> datetime | None:
    """Parse any MATI timestamp shape into an aware UTC datetime; anything else is ``None``.

    Digits past microseconds are truncated, not rounded, so a parsed time never lies in the
    future of the one MATI meant.

    The filter parses about eight of these per record, so a string with one of the
    ``_FAST_SHAPES`` goes through ``datetime.fromisoformat`` (C, several times faster);
    anything else, and anything ``fromisoformat`` refuses, takes the pattern path, which
    stays the definition and decides every edge case exactly as before.
    """
    if not isinstance(text, str):
        return None
    if text.isascii() and text.encode().translate(_DIGITS_AS_NINE) in _FAST_SHAPES:
        try:
            parsed = _FROM_ISO(text)
        except ValueError:
            return _parse_by_pattern(text)
        if parsed.tzinfo is UTC:
            return parsed
        try:
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            return _parse_by_pattern(text)
    return _parse_by_pattern(text)


def _parse_by_pattern(text: str) -> datetime | None:
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    try:
        offset = timedelta(hours=int(off_h), minutes=int(off_m)) if sign else timedelta(0)
        zone = timezone(-offset if sign == "-" else offset)
        micros = int((fraction or "0")[:6].ljust(6, "0"))
        local = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, zone
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def format_timestamp(dt: datetime) -> str:
    """STIX timestamp ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC, milliseconds truncated.

    Raises ValueError for a naive datetime: guessing its zone could shift ``valid_until`` by
    hours, which is a bug to surface, not to hide.
    """
    u = dt
    if dt.tzinfo is not UTC:
        if dt.utcoffset() is None:
            raise ValueError("format_timestamp needs an aware datetime")
        u = dt.astimezone(UTC)
    # %-formatting: about twice as fast as the equivalent f-string with format specs.
    return _STIX_TIME % (u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond // 1000)


def is_hash(hash_type: HashType, text: str) -> bool:
    """True iff ``text`` is a lower-case hex digest of the right length for ``hash_type``."""
    return len(text) == HASH_HEX_DIGITS[hash_type] and _HEX.fullmatch(text) is not None


def _required_fields(raw: dict[object, object]) -> tuple[str, str, str] | Rejection:
    """``id``, ``type`` and ``value``, or the rejection for the first of them that is unusable."""
    raw_id = raw.get("id")
    known_id = raw_id if isinstance(raw_id, str) and raw_id.strip() else None
    fields: list[str] = []
    for key in ("id", "type", "value"):
        found = _required_text(raw, key, known_id)
        if isinstance(found, Rejection):
            return found
        fields.append(found)
    return fields[0], fields[1], fields[2]


def _required_text(raw: dict[object, object], key: str, known_id: str | None) -> str | Rejection:
    # An explicit null is read as absent: MATI's optional blocks show up either way.
    text = raw.get(key)
    if text is None:
        return Rejection(RejectReason.MISSING_FIELD, f"{key!r} is missing", known_id)
    if not isinstance(text, str) or not text.strip():
        return Rejection(
            RejectReason.BAD_FIELD,
            f"{key!r} must be a non-empty string, got {_describe(text)}",
            known_id,
        )
    return text


def _normalise_value(kind: IndicatorType, text: str) -> str | None:
    if kind is IndicatorType.URL:
        return text
    value = text.strip()
    if kind is IndicatorType.IPV4:
        return value if _IPV4.fullmatch(value) is not None else None
    value = value.lower()
    if kind is IndicatorType.MD5 and not is_hash(HashType.MD5, value):
        return None
    return value


def _build(
    raw: dict[object, object], indicator_id: str, kind: IndicatorType, value: str
) -> Indicator:
    get = raw.get
    rating = get("threat_rating")
    sources = get("sources")
    return Indicator(
        id=indicator_id,
        type=kind,
        value=value,
        mscore=_score(get("mscore")),
        threat_score=_score(rating.get("threat_score")) if isinstance(rating, dict) else None,
        sources=(
            tuple([_source(item) for item in sources if isinstance(item, dict)])
            if isinstance(sources, list)
            else ()
        ),
        category=_categories(get("category")),
        hashes=_hashes(value, get("associated_hashes")) if kind is IndicatorType.MD5 else (),
        associations=_associations(get("attributed_associations")),
        campaigns=_campaigns(get("campaigns")),
        warning_lists=_warning_lists(get("misp")),
        last_updated=parse_timestamp(get("last_updated")),
        first_seen=parse_timestamp(get("first_seen")),
        last_seen=parse_timestamp(get("last_seen")),
    )


def _score(value: object) -> int | None:
    """A 0..100 score or ``None``. An integral float (``92.0``) is that int; ``bool`` is
    excluded although Python calls it an int.
    Out-of-range scores become ``None`` rather than being clamped: we do not know what MATI
    meant, so the score must not pass a threshold, and STIX ``confidence`` only allows 0..100."""
    if type(value) is int:  # the common case; bool and other int subclasses go the long way
        return value if 0 <= value <= 100 else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return value
    return None


def _objects(value: object) -> list[dict[object, object]]:
    """The object entries of a list field; entries of other types are skipped."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: object) -> str:
    """A stripped string, or ``""`` for anything that is not a string."""
    return value.strip() if isinstance(value, str) else ""


def _categories(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        return ()
    return tuple(
        [name for item in value if isinstance(item, str) and (name := item.strip().lower())]
    )


def _warning_lists(value: object) -> tuple[str, ...] | None:
    """The names flagged true in ``misp`` (name -> bool, specs/mati-api-v4.md §5.3), lower-cased
    and sorted; ``None`` without a map. Only an explicit true flags a list (a JSON ``true``, or
    the string in any case): a garbled flag must not make an indicator look like a false
    positive. The set of names grows over time, so none is hard-coded."""
    if not isinstance(value, dict):
        return None
    flagged = [
        name.strip().lower()
        for name, flag in value.items()
        if isinstance(name, str)
        and name.strip()
        and (flag is True or (isinstance(flag, str) and flag.strip().lower() == "true"))
    ]
    return tuple(sorted(set(flagged)))


def _source(item: dict[object, object]) -> Source:
    # Only an explicit ``true`` makes a source OSINT: a garbled flag must not hide Mandiant's
    # own sightings behind EXCLUDE_OSINT.
    get = item.get
    name = get("source_name")
    return Source(
        name.strip() if isinstance(name, str) else "",
        get("osint") is True,
        _categories(get("category")),
        parse_timestamp(get("first_seen")),
        parse_timestamp(get("last_seen")),
    )


def _associations(value: object) -> tuple[Association, ...]:
    if not isinstance(value, list) or not value:
        return ()
    return tuple(
        [
            Association(_text(item.get("id")), name, _text(item.get("type")))
            for item in value
            if isinstance(item, dict) and (name := _text(item.get("name")))
        ]
    )


def _campaigns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        return ()
    return tuple(
        [name for item in value if isinstance(item, dict) and (name := _text(item.get("name")))]
    )


def _hashes(md5: str, value: object) -> tuple[tuple[HashType, str], ...]:
    """The md5 itself, then the first well-formed entry per other hash type, in enum order.

    One value per type, because each hash type maps to one STIX id; the indicator's own value
    is authoritative for md5. Malformed entries are skipped, never uploaded.
    """
    found: dict[HashType, str] = {HashType.MD5: md5}
    for item in _objects(value):
        hash_type = _HASH_TYPES.get(_text(item.get("type")).lower())
        if hash_type is None or hash_type in found:
            continue
        digest = _text(item.get("value")).lower()
        if is_hash(hash_type, digest):
            found[hash_type] = digest
    return tuple([(hash_type, found[hash_type]) for hash_type in _HASH_ORDER if hash_type in found])


def _describe(value: object) -> str:
    """Name a wire value in JSON's words, quoting strings; never the whole value."""
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if value is None:
        return "null"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _quote(text: str) -> str:
    return repr(clip(text, _MAX_QUOTE_CHARS))
