"""How much one MATI record may carry, why a record was refused, and the stand-in the fetcher
publishes in place of a record no message can carry.

Bad input costs the record it is in, never its page (DESIGN §4): every bound here ends in a
counted ``Rejection`` the filter dead-letters, never in an exception.

**The whole record** (``MAX_RECORD_BYTES``): a record is 3-5 KB as JSON (specs/mati-api-v4.md
§5); 192 KiB is forty times that, and still fits one Azure Service Bus Standard message
(256 KB, properties and framing included: ours take at most a few KB) with room to spare, so
publishing a record never depends on the tier or the backend (Redis Streams has no cap, but a
record of megabytes is broken or hostile there too). And orjson reads 1,024 levels of nesting
but writes only ``MAX_WRITABLE_DEPTH``: a record between the two decodes from MATI's page and
cannot be encoded into a message. The fetcher publishes a :func:`stand_in` for either, which
keeps the record's id and says why; the parser refuses it with that reason (``too_large``,
``too_deep``), so the page is consumed, the checkpoint moves, and the record is dead-lettered
where an operator sees it.

**Text that reaches the STIX object** (``MAX_ID_CHARS``, ``MAX_NAME_CHARS``,
``MAX_NAMES_CHARS``, and the value's ``MAX_VALUE_CHARS``): categories, association, campaign
and source names are a few to a few dozen characters, ids about 45; all but source names
become the STIX object's labels, description and references, so their length decides the size
of the upload message and of what Sentinel stores. An id or a name longer than its bound is
``bad_field`` and names that reach the object totalling more than ``MAX_NAMES_CHARS`` are
``too_large``, all rejections, not truncations: these are identifiers (a tag an analyst filters
on, an actor's name, the id the STIX id derives from) and one cut short names something else.
Together the bounds keep an upload message far below a bus message's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import orjson

from shared.core.indicator import Indicator

#: Longest record, in bytes of JSON as the fetcher publishes it (module docstring).
MAX_RECORD_BYTES: Final = 192 * 1024
#: Deepest nesting orjson writes; a decoded record nested deeper cannot be published.
MAX_WRITABLE_DEPTH: Final = 254
#: Longest indicator value: an fqdn has at most 253 characters and real URLs a few thousand; a
#: value of megabytes is a broken or hostile record, refused rather than carried into a STIX
#: pattern Sentinel would refuse.
MAX_VALUE_CHARS: Final = 16_384
#: Longest category, association, campaign or source name (real ones: "control-server",
#: "UNC9999", "CAMP.25.014", "the_haleys_ssh_dict_attack").
MAX_NAME_CHARS: Final = 1_024
#: Most characters of names that reach the STIX object's labels and description, together.
MAX_NAMES_CHARS: Final = 16_384
#: Longest ``Rejection.detail``: enough to act on, short enough for a log line or a
#: dead-letter reason, and never a whole hostile payload.
MAX_DETAIL_CHARS: Final = 200
#: Longest MATI id, of a record and of a ``Rejection``: real ones are ``<type>--<uuid>``,
#: about 45 characters, and an id is written four times into the STIX object.
MAX_ID_CHARS: Final = 100
#: The key that marks a stand-in. A MATI record that carries it and no value is refused with
#: the reason it names, which is what it would be refused for anyway: it has no value.
STAND_IN_KEY: Final = "mati2sentinel_refused"
#: The fields of the refused record a stand-in keeps, clipped: what ``dlq list`` and
#: ``explain`` show of it.
_KEPT: Final = ("id", "type", "last_updated")
_KEPT_CHARS: Final = 200


class RejectReason(StrEnum):
    """Why a body or record could not become an indicator; each is counted separately."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    UNSUPPORTED_TYPE = "unsupported_type"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"


#: The reasons a stand-in may carry.
_STAND_IN_REASONS: Final = {r.value: r for r in (RejectReason.TOO_LARGE, RejectReason.TOO_DEEP)}


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused body or record; ``detail`` and ``indicator_id`` are clipped on construction
    so no caller can put a whole payload into a log line or a dead-letter reason."""

    reason: RejectReason
    detail: str
    indicator_id: str | None = None

    def __post_init__(self) -> None:
        # object.__setattr__ is the documented way to normalise fields of a frozen dataclass.
        object.__setattr__(self, "detail", clip(self.detail, MAX_DETAIL_CHARS))
        if self.indicator_id is not None:
            object.__setattr__(self, "indicator_id", clip(self.indicator_id, MAX_ID_CHARS))


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record_body(record: object) -> tuple[bytes, Rejection | None]:
    """``record`` as a message body: its JSON, or a stand-in's with the reason when it is
    nested too deep to write or larger than ``MAX_RECORD_BYTES``.

    A record decoded by orjson (as every MATI page is) fails to encode only for its depth:
    its strings are valid, its keys strings, its numbers within orjson's range."""
    try:
        body = orjson.dumps(record)
    except orjson.JSONEncodeError:
        refusal = _refusal(
            record,
            RejectReason.TOO_DEEP,
            f"record nested more than {MAX_WRITABLE_DEPTH} levels deep: no message can carry it",
        )
    else:
        if len(body) <= MAX_RECORD_BYTES:
            return body, None
        refusal = too_large(len(body), _kept(record).get("id"))
    return orjson.dumps(stand_in(record, refusal)), refusal


def too_large(size: int, indicator_id: str | None) -> Rejection:
    return Rejection(
        RejectReason.TOO_LARGE,
        f"record has {size} bytes as JSON, more than {MAX_RECORD_BYTES}",
        indicator_id,
    )


def stand_in(record: object, refusal: Rejection) -> dict[str, object]:
    """What is published in place of ``record``: the fields of ``_KEPT`` it has as strings,
    and why it was refused. It has no ``value``, so no parser takes it for an indicator."""
    return {
        **_kept(record),
        STAND_IN_KEY: {"reason": refusal.reason.value, "detail": refusal.detail},
    }


def read_stand_in(raw: dict[object, object]) -> Rejection | None:
    """The rejection a stand-in carries; ``None`` when ``raw`` is not one."""
    marker = raw.get(STAND_IN_KEY)
    if not isinstance(marker, dict):
        return None
    reason = _STAND_IN_REASONS.get(str(marker.get("reason")))
    detail = marker.get("detail")
    if reason is None or not isinstance(detail, str):
        return None
    known = raw.get("id")
    return Rejection(reason, detail, known if isinstance(known, str) and known else None)


def text_problem(indicator: Indicator) -> Rejection | None:
    """The rejection for an id or a name too long, or for names that reach the STIX object
    too long together (module docstring); ``None`` for every real record."""
    if len(indicator.id) > MAX_ID_CHARS:
        return Rejection(
            RejectReason.BAD_FIELD,
            f"'id' has {len(indicator.id)} characters, more than {MAX_ID_CHARS}",
            indicator.id,
        )
    named = (
        ("category", indicator.category),
        ("source", [s.name for s in indicator.sources]),
        ("source category", [c for s in indicator.sources for c in s.categories]),
        ("association", [a.name for a in indicator.associations]),
        ("campaign", indicator.campaigns),
    )
    for field, names in named:
        for name in names:
            if len(name) > MAX_NAME_CHARS:
                return Rejection(
                    RejectReason.BAD_FIELD,
                    f"{field} name has {len(name)} characters, more than {MAX_NAME_CHARS}",
                    indicator.id,
                )
    shown = (indicator.categories, indicator.actors, indicator.malware, indicator.campaigns)
    total = sum(len(name) for names in shown for name in names)
    if total > MAX_NAMES_CHARS:
        return Rejection(
            RejectReason.TOO_LARGE,
            f"category, association and campaign names have {total} characters together, "
            f"more than {MAX_NAMES_CHARS}",
            indicator.id,
        )
    return None


def _refusal(record: object, reason: RejectReason, detail: str) -> Rejection:
    return Rejection(reason, detail, _kept(record).get("id"))


def _kept(record: object) -> dict[str, str]:
    if not isinstance(record, dict):
        return {}
    return {
        key: clip(value, _KEPT_CHARS)
        for key in _KEPT
        if isinstance(value := record.get(key), str) and value
    }
