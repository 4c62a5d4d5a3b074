"""The bus's messages as Service Bus carries them: what goes out, what comes back, and the
application properties a replay needs (``shared.adapters.servicebus`` says why it replays so).

The contract's ``Message`` / ``Delivery`` / ``DeadLetter`` / ``Peeked`` carry text properties
and a 1-based delivery count; the SDK hands back bytes and counts earlier deliveries. Every
translation between the two is here, so the bus class deals only in links and settling.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage

from shared.contract.bus import DeadLetter, Delivery, Message, Peeked, Source, Subscription

#: What the SDK accepts as an application property value.
_Primitive: TypeAlias = int | float | bytes | bool | str | uuid.UUID

#: Application property naming the one subscription a replayed message is for.
REPLAY_TO: Final = "m2s_replay_to"
#: Application property keeping a replayed message's original ``message_id``.
ORIGINAL_MESSAGE_ID: Final = "m2s_original_message_id"
#: Application properties Service Bus adds to dead letters; not the sender's properties.
DEAD_LETTER_PROPERTIES: Final = frozenset({"DeadLetterReason", "DeadLetterErrorDescription"})
_RESERVED: Final = frozenset({REPLAY_TO, ORIGINAL_MESSAGE_ID}) | DEAD_LETTER_PROPERTIES


def replay_rule(subscription: str) -> str:
    """The SQL filter every subscription carries, so replays reach only their subscription."""
    if "'" in subscription:
        raise ValueError(f"subscription name must not contain a quote: {subscription!r}")
    return f"NOT EXISTS({REPLAY_TO}) OR {REPLAY_TO} = '{subscription}'"


def outgoing(message: Message) -> ServiceBusMessage:
    if not message.message_id:
        raise ValueError("message_id must not be empty (duplicate detection keys on it)")
    if not isinstance(message.body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, got {type(message.body).__name__}")
    reserved = _RESERVED.intersection(message.properties)
    if reserved:
        raise ValueError(f"application properties {sorted(reserved)} are reserved by the bus")
    return ServiceBusMessage(
        bytes(message.body),
        message_id=message.message_id,
        application_properties=_wire_properties(message.properties),
    )


def replayed(message: ServiceBusReceivedMessage, source: Source) -> ServiceBusMessage:
    """A dead letter as a new message: fresh id (the old one is inside the duplicate-detection
    window), the original id kept in a property, addressed to ``source`` alone."""
    properties = sender_properties(message.application_properties)
    properties[ORIGINAL_MESSAGE_ID] = original_id(message)
    if isinstance(source, Subscription):
        properties[REPLAY_TO] = source.name
    return ServiceBusMessage(
        body_of(message),
        message_id=uuid.uuid4().hex,
        application_properties=_wire_properties(properties),
    )


def _wire_properties(properties: Mapping[str, str]) -> dict[str | bytes, _Primitive]:
    # Keys as bytes, the SDK's own spelling: with Azure SDK tracing on, the SDK adds its
    # ``traceparent`` only if absent (``setdefault`` on bytes keys), so the trace context the
    # message carries (shared.telemetry.tracing) is kept. A str key would not match, and the SDK's
    # value, encoded after ours under the same AMQP string key, would win on receive.
    return {key.encode(): value for key, value in properties.items()}


def delivery(message: ServiceBusReceivedMessage) -> Delivery:
    return Delivery(
        body=body_of(message),
        message_id=original_id(message),
        properties=sender_properties(message.application_properties),
        delivery_count=(message.delivery_count or 0) + 1,
        enqueued_at=message.enqueued_time_utc or datetime.now(UTC),
        lock_token=str(message.lock_token),
    )


def dead_letter(message: ServiceBusReceivedMessage) -> DeadLetter:
    return DeadLetter(
        body=body_of(message),
        message_id=original_id(message),
        properties=sender_properties(message.application_properties),
        reason=message.dead_letter_reason or "",
        description=message.dead_letter_error_description or "",
        delivery_count=(message.delivery_count or 0) + 1,
        dead_lettered_at=message.enqueued_time_utc or datetime.now(UTC),
        lock_token=str(message.sequence_number),
    )


def peeked(message: ServiceBusReceivedMessage, now: datetime) -> Peeked:
    """``locked`` = ``locked_until`` lies ahead of ``now``, as ``counts`` reckons it."""
    return Peeked(
        body=body_of(message),
        message_id=original_id(message),
        properties=sender_properties(message.application_properties),
        enqueued_at=message.enqueued_time_utc or now,
        locked=bool(message.locked_until_utc and message.locked_until_utc > now),
    )


def body_of(message: ServiceBusReceivedMessage) -> bytes:
    body: Any = message.body
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return b"".join(bytes(section) for section in body)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def sender_properties(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    """The sender's application properties as text (the SDK hands them back as bytes)."""
    properties = {_text(k): _text(v) for k, v in (raw or {}).items()}
    for name in _RESERVED:
        properties.pop(name, None)
    return properties


def original_id(message: ServiceBusReceivedMessage) -> str:
    for key, value in (message.application_properties or {}).items():
        if _text(key) == ORIGINAL_MESSAGE_ID:
            return _text(value)
    return str(message.message_id or "")


def check_token(token: str) -> None:
    try:
        uuid.UUID(token)
    except ValueError:
        raise ValueError(f"not a lock token of this bus: {token!r}") from None


def sequence_number(token: str) -> int:
    if not token.isdigit():
        raise ValueError(f"not a dead letter of this bus (lock_token {token!r})")
    return int(token)
