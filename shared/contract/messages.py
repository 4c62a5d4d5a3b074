"""The message contract between the services (DESIGN.md §3): entities, bodies, properties, ids.

- fetcher → topic ``indicators``: the raw MATI record, byte for byte as decoded, so the filter
  (and a replay months later) sees exactly what Mandiant sent; or, for a record no message
  can carry (too large, too deep), a small stand-in the filter refuses with that reason.
- filter → queue ``upload.<destination>``: the accepted indicator as the filter mapped and
  fingerprinted it (the STIX object without its upload timestamps, ``shared.core.stix.Draft``) plus
  why it is forwarded. The uploader stamps and sends it: it never parses or maps a record, so
  the object Sentinel stores is the one the seen entry's fingerprint describes, even while a
  rolling upgrade runs filter and uploader of different versions.

Every message carries a W3C trace context in its application properties (``TRACE_PROPERTIES``),
so one indicator's path is one trace. The caller hands it over as those properties
(``shared.telemetry.tracing.inject``): the contract knows their names, not the tracing library.

``message_id`` is derived from content, never random: the same indicator version published
twice (a page re-fetched after a crash, an overlapping window) gets the same id, and the bus's
duplicate detection drops the copy. A full sync adds its run to the content it derives from,
so its re-judging gets through while its own retries are still dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

import orjson

from shared.contract.bus import Message, Queue, Subscription, Topic
from shared.core.errors import MalformedMessage
from shared.core.fingerprint import (
    EXTENSION_ID,
    MAX_GENERATION,
    SOURCE_TAG_BYTES,
    ForwardReason,
)
from shared.core.record_bounds import record_body
from shared.core.stix import MATI_ID_PROPERTY, THREAT_SCORE_PROPERTY, Draft, extension_of

RAW_SCHEMA: Final = "mati.indicator/1"
#: Version 3 carries the mapped object with MATI's data in our property extension. Version 2
#: (the same with top-level ``x_mati_*`` properties) is still read, moved into the extension
#: (``_from_version_2``); version 1 (the raw record) is refused as malformed.
UPLOAD_SCHEMA: Final = "upload.indicator/3"
#: Version 2's top-level properties and where version 3 keeps them in our extension; version
#: 2's fingerprint property is only ever added when stamping, so a draft never holds it.
_VERSION_2_PROPERTIES: Final = {
    "x_mati_id": MATI_ID_PROPERTY,
    "x_mati_threat_score": THREAT_SCORE_PROPERTY,
}
INDICATORS: Final = Topic("indicators")
#: The W3C trace context's application properties (traceparent, and tracestate when set).
TRACE_PROPERTIES: Final = ("traceparent", "tracestate")
EMPTY: Final[Mapping[str, str]] = MappingProxyType({})
_SOURCE_TAG: Final = re.compile(f"[0-9a-f]{{{2 * SOURCE_TAG_BYTES}}}")
_FINGERPRINT: Final = re.compile("[0-9a-f]{32}")
_MICROSECOND: Final = timedelta(microseconds=1)


def subscription(destination: str) -> Subscription:
    """Each destination reads the feed through its own subscription, with its own filters."""
    return Subscription(INDICATORS.name, destination)


def upload_queue(destination: str) -> Queue:
    return Queue(f"upload.{destination}")


def revocation_queue(destination: str) -> Queue:
    """The destination's priority lane: revocations (a filter's, a suppression's) wait here,
    not behind a back-fill in ``upload_queue``; the uploader takes from it first, within the
    same rate budget. Its messages are ``upload_message``s like any other."""
    return Queue(f"revoke.{destination}")


def _text_field(record: object, key: str) -> str:
    if isinstance(record, Mapping):
        value = record.get(key)
        if isinstance(value, str):
            return value[:200]
    return ""


#: The raw message property that marks a full sync's records (``sync --once --full``).
SYNC_PROPERTY: Final = "sync"
FULL_SYNC: Final = "full"
#: The raw message property that marks a stand-in for a record no message can carry, and why
#: (``too_large``, ``too_deep``): the fetcher counts and logs it by this.
REFUSED_PROPERTY: Final = "refused"


def raw_message(
    record: object, *, run_id: str, trace: Mapping[str, str] = EMPTY, full: bool = False
) -> Message:
    """Wrap one MATI record as published by the fetcher; any JSON value is accepted, since
    judging records is the filter's job (a bad one is dead-lettered there, with its reason).

    The message id is derived from the record's id and ``last_updated``, so a page published
    twice is published once. A ``full`` sync's messages take the run into their ids, so the
    bus does not drop a deliberate re-judging of records it carried minutes ago (a retry
    within the run still deduplicates), and say so (``sync=full``): the filter re-judges them
    without treating them as MATI reporting the indicator again.

    The message carries the ``TRACE_PROPERTIES`` of ``trace`` as they are (a page's records
    share one context: it is formatted once, not per record).

    A record nested too deep to write as JSON, or larger than ``MAX_RECORD_BYTES``, travels as
    a stand-in with its id and why (``shared.core.record_bounds``; the filter's parser
    refuses it with that reason and dead-letters it), marked ``refused=<reason>``: never an
    exception out of the publish, never a message the bus refuses for its size. Its message
    id is the record's own, so a page fetched twice still publishes it once (without an id,
    one derived from the stand-in: two anonymous records refused alike count as one)."""
    body, refusal = record_body(record)
    indicator_id = _text_field(record, "id")
    last_updated = _text_field(record, "last_updated")
    seed = f"{indicator_id}|{last_updated}".encode() if indicator_id else body
    if full:
        seed += b"|" + run_id.encode()
    return Message(
        body=body,
        message_id=hashlib.blake2b(seed, digest_size=16).hexdigest(),
        properties=_traced(
            {
                "schema": RAW_SCHEMA,
                "indicator_id": indicator_id,
                "indicator_type": _text_field(record, "type"),
                "run_id": run_id,
                **({SYNC_PROPERTY: FULL_SYNC} if full else {}),
                **({REFUSED_PROPERTY: refusal.reason.value} if refusal else {}),
            },
            trace,
        ),
    )


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """One STIX indicator to upload: the filter's draft of it and why it is forwarded."""

    draft: Draft
    reason: ForwardReason
    #: The raw record's source tag (``shared.core.source_tag``), stored with the seen entry once
    #: Sentinel accepted the upload; empty when the filter had none.
    source_tag: bytes = b""
    #: MATI's type of the record (``ipv4``, ``md5``...), for the message's properties.
    indicator_type: str = ""
    #: The generation-0 id the seen entry and the claim are keyed by, when the object goes
    #: out under a later generation's id (``shared.core.stix.stix_id``); empty: the draft's id.
    lineage: str = ""
    #: The revocation generation the draft's id belongs to, recorded in the seen entry.
    generation: int = 0

    @property
    def stix_id(self) -> str:
        """The lineage id: what the seen cache and claims know this object by."""
        return self.lineage or self.draft.stix_id

    @property
    def revoked(self) -> bool:
        return self.draft.revoked

    @property
    def fingerprint(self) -> str:
        return self.draft.fingerprint

    @property
    def indicator_id(self) -> str:
        """MATI's id of the record, as the object's extension names it."""
        ours = extension_of(self.draft.body)
        return _text_field(ours, MATI_ID_PROPERTY)


def upload_message(
    request: UploadRequest,
    *,
    run_id: str,
    source_message_id: str,
    trace: Mapping[str, str] = EMPTY,
) -> Message:
    """``source_message_id`` is the raw message's id (MATI id and ``last_updated``): a raw
    message forwarded twice (redelivered after a failed forward) yields the same upload id and
    the bus drops the copy, while a later report of the indicator (a refresh, or a change and
    back within the duplicate window) yields a new one and gets through.

    The message carries the ``TRACE_PROPERTIES`` of ``trace``: the filter's span for it, or
    the raw message's own properties when the filter made no span for it."""
    draft = request.draft
    body = orjson.dumps(
        {
            "object": draft.body,
            "fingerprint": draft.fingerprint,
            "expiration_us": draft.expiration // _MICROSECOND,
            "first_known": None if draft.first_known is None else draft.first_known.isoformat(),
            "reason": request.reason.value,
            "source_tag": request.source_tag.hex(),
            "indicator_type": request.indicator_type,
            # Only when they differ from the defaults: an older uploader ignores them anyway.
            **({"lineage": request.stix_id} if request.stix_id != draft.stix_id else {}),
            **({"generation": request.generation} if request.generation else {}),
        }
    )
    properties = {
        "schema": UPLOAD_SCHEMA,
        "indicator_id": request.indicator_id,
        "indicator_type": request.indicator_type[:200],
        "stix_id": request.stix_id,
        "run_id": run_id,
    }
    return Message(
        body=body,
        message_id=f"{request.stix_id}:{request.fingerprint[:16]}:{source_message_id}",
        properties=_traced(properties, trace),
    )


def _traced(properties: dict[str, str], trace: Mapping[str, str]) -> dict[str, str]:
    for key in TRACE_PROPERTIES:
        if key in trace:
            properties[key] = trace[key]
    return properties


def read_upload(body: bytes) -> UploadRequest:
    """Decode an upload message, or raise ``MalformedMessage`` saying what is wrong.

    The object itself is checked only as far as the seen cache depends on it (its STIX id);
    whatever else is wrong with it, Sentinel says per record, and the uploader dead-letters
    that record with Sentinel's message."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage("upload message is not JSON") from exc
    if not isinstance(data, dict):
        raise MalformedMessage("upload message is not a JSON object")
    obj, fingerprint = data.get("object"), data.get("fingerprint")
    if not isinstance(obj, dict):
        detail = " (upload.indicator/1, queued by an older filter)" if "record" in data else ""
        raise MalformedMessage(f"upload message has no STIX object{detail}")
    stix_id = obj.get("id")
    if not isinstance(stix_id, str) or not stix_id.startswith("indicator--"):
        raise MalformedMessage("upload message has no STIX indicator id")
    if extension_of(obj) is None and "x_mati_id" in obj:
        obj = _from_version_2(obj)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise MalformedMessage("upload message has no fingerprint")
    if _FINGERPRINT.fullmatch(fingerprint) is None:
        # Caught here, not when the accepted upload is committed: a seen entry cannot hold it.
        raise MalformedMessage("upload message has a malformed fingerprint")
    expiration_us = data.get("expiration_us")
    if type(expiration_us) is not int or expiration_us < 1000:
        raise MalformedMessage("upload message has no expiration of at least 1 ms")
    try:
        reason = ForwardReason(str(data.get("reason")))
    except ValueError as exc:
        raise MalformedMessage("upload message has an unknown reason") from exc
    indicator_type = data.get("indicator_type") or ""
    if not isinstance(indicator_type, str):
        raise MalformedMessage("upload message has a malformed indicator type")
    lineage = data.get("lineage", stix_id)
    if not isinstance(lineage, str) or not lineage.startswith("indicator--"):
        raise MalformedMessage("upload message has a malformed lineage id")
    generation = data.get("generation", 0)
    if type(generation) is not int or not 0 <= generation <= MAX_GENERATION:
        raise MalformedMessage("upload message has a malformed generation")
    draft = Draft.known(obj, fingerprint, timedelta(microseconds=expiration_us), _first_known(data))
    return UploadRequest(
        draft,
        reason,
        _source_tag(data),
        indicator_type,
        lineage="" if lineage == stix_id else lineage,
        generation=generation,
    )


def _from_version_2(obj: Mapping[str, object]) -> dict[str, object]:
    """An ``upload.indicator/2`` object (queued by a filter of the previous version, during a
    rolling upgrade) in version 3's shape: MATI's id and threat score move into our extension.

    Its fingerprint stays the one the older filter claimed and the message carries, so the
    uploader's in-flight claim still matches and nothing queued before the upgrade is lost;
    the seen entry then holds that older fingerprint, and the next report of the indicator
    uploads it once more in the new shape, as every indicator is once after the upgrade."""
    ours: dict[str, object] = {"extension_type": "property-extension"}
    rest: dict[str, object] = {}
    for key, value in obj.items():
        if key in _VERSION_2_PROPERTIES:
            ours[_VERSION_2_PROPERTIES[key]] = value
        else:
            rest[key] = value
    rest["extensions"] = {EXTENSION_ID: ours}
    return rest


def _first_known(data: Mapping[str, object]) -> datetime | None:
    text = data.get("first_known")
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise MalformedMessage("upload message has a malformed first_known time")
    return moment


def _source_tag(data: Mapping[str, object]) -> bytes:
    text = data.get("source_tag") or ""
    if not isinstance(text, str) or (text and _SOURCE_TAG.fullmatch(text) is None):
        raise MalformedMessage("upload message has a malformed source tag")
    return bytes.fromhex(text)
