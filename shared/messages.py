"""The message contract between the services (DESIGN.md §3): entities, bodies, properties, ids.

- fetcher → topic ``indicators``: the raw MATI record, byte for byte as decoded, so the filter
  (and a replay months later) sees exactly what Mandiant sent.
- filter → queue ``upload.<destination>``: the raw record again plus what the filter decided
  (which hash, the fingerprint, why it is forwarded), so the uploader needs no second look-up.

Every message carries the W3C trace context of the span it was built in (or of ``context``)
in its application properties (``shared.tracing``), so one indicator's path is one trace.

``message_id`` is derived from content, never random: the same indicator version published
twice (a page re-fetched after a crash, an overlapping window) gets the same id, and the bus's
duplicate detection drops the copy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import orjson
from opentelemetry.context import Context

from shared import tracing
from shared.bus import Message, Queue, Subscription, Topic
from shared.fingerprint import SOURCE_TAG_BYTES, ForwardReason
from shared.indicator import HashType

RAW_SCHEMA: Final = "mati.indicator/1"
UPLOAD_SCHEMA: Final = "upload.indicator/1"
INDICATORS: Final = Topic("indicators")
_SOURCE_TAG: Final = re.compile(f"[0-9a-f]{{{2 * SOURCE_TAG_BYTES}}}")
_FINGERPRINT: Final = re.compile("[0-9a-f]{32}")


def subscription(destination: str) -> Subscription:
    """Each destination reads the feed through its own subscription, with its own filters."""
    return Subscription(INDICATORS.name, destination)


def upload_queue(destination: str) -> Queue:
    return Queue(f"upload.{destination}")


def _text_field(record: object, key: str) -> str:
    if isinstance(record, dict):
        value = record.get(key)
        if isinstance(value, str):
            return value[:200]
    return ""


def raw_message(record: object, *, run_id: str, context: Context | None = None) -> Message:
    """Wrap one MATI record as published by the fetcher; any JSON value is accepted, since
    judging records is the filter's job (a bad one is dead-lettered there, with its reason)."""
    body = orjson.dumps(record)
    indicator_id = _text_field(record, "id")
    last_updated = _text_field(record, "last_updated")
    seed = f"{indicator_id}|{last_updated}".encode() if indicator_id else body
    return Message(
        body=body,
        message_id=hashlib.blake2b(seed, digest_size=16).hexdigest(),
        properties=tracing.inject(
            {
                "schema": RAW_SCHEMA,
                "indicator_id": indicator_id,
                "indicator_type": _text_field(record, "type"),
                "run_id": run_id,
            },
            context,
        ),
    )


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """One STIX indicator to upload: the raw record, the hash it stands for, and the decision."""

    record: Mapping[str, object]
    stix_id: str
    hash_type: HashType | None
    fingerprint: str
    reason: ForwardReason
    #: The raw record's source tag (``shared.source_tag``), stored with the seen entry once
    #: Sentinel accepted the upload; empty for messages queued before tags existed.
    source_tag: bytes = b""


class MalformedMessage(ValueError):
    """Raised when a message body is not the contract's shape (a poison message)."""


def upload_message(
    request: UploadRequest,
    *,
    run_id: str,
    source_message_id: str,
    context: Context | None = None,
    carried: Mapping[str, str] | None = None,
) -> Message:
    """``source_message_id`` is the raw message's id (MATI id and ``last_updated``): a raw
    message forwarded twice (redelivered after a failed forward) yields the same upload id and
    the bus drops the copy, while a later report of the indicator (a refresh, or a change and
    back within the duplicate window) yields a new one and gets through.

    The message carries the trace of ``context``, or, given ``carried`` (the raw message's
    properties, when the filter made no span for it), the raw message's own trace context."""
    body = orjson.dumps(
        {
            "record": request.record,
            "stix_id": request.stix_id,
            "hash_type": request.hash_type.value if request.hash_type else None,
            "fingerprint": request.fingerprint,
            "reason": request.reason.value,
            "source_tag": request.source_tag.hex(),
        }
    )
    properties = {
        "schema": UPLOAD_SCHEMA,
        "indicator_id": _text_field(request.record, "id"),
        "indicator_type": _text_field(request.record, "type"),
        "stix_id": request.stix_id,
        "run_id": run_id,
    }
    return Message(
        body=body,
        message_id=f"{request.stix_id}:{request.fingerprint[:16]}:{source_message_id}",
        properties=(
            tracing.carry(properties, carried)
            if carried is not None
            else tracing.inject(properties, context)
        ),
    )


def read_upload(body: bytes) -> UploadRequest:
    """Decode an upload message, or raise ``MalformedMessage`` saying what is wrong."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage("upload message is not JSON") from exc
    if not isinstance(data, dict):
        raise MalformedMessage("upload message is not a JSON object")
    record, stix_id, fingerprint = data.get("record"), data.get("stix_id"), data.get("fingerprint")
    if not isinstance(record, dict):
        raise MalformedMessage("upload message has no record object")
    if not isinstance(stix_id, str) or not stix_id.startswith("indicator--"):
        raise MalformedMessage("upload message has no STIX indicator id")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise MalformedMessage("upload message has no fingerprint")
    if _FINGERPRINT.fullmatch(fingerprint) is None:
        # Caught here, not when the accepted upload is committed: a seen entry cannot hold it.
        raise MalformedMessage("upload message has a malformed fingerprint")
    try:
        hash_type = HashType(data["hash_type"]) if data.get("hash_type") else None
        reason = ForwardReason(str(data.get("reason")))
    except ValueError as exc:
        raise MalformedMessage("upload message has an unknown hash type or reason") from exc
    return UploadRequest(record, stix_id, hash_type, fingerprint, reason, _source_tag(data))


def _source_tag(data: Mapping[str, object]) -> bytes:
    text = data.get("source_tag") or ""
    if not isinstance(text, str) or (text and _SOURCE_TAG.fullmatch(text) is None):
        raise MalformedMessage("upload message has a malformed source tag")
    return bytes.fromhex(text)
