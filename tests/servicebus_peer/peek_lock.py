"""Peek-lock, the fake Service Bus's side of it: what a receive link is sent from the broker, what
the SDK's dispositions do to the locks, and the management operations on them (renew-lock,
peek-message), with the CBS/management request and reply messages they travel in.

Kept apart from the connection handling in amqp.py, whose handler mixes ``PeekLockHandler`` in:
this is where the broker's state meets the wire.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any, Final

import cproton
from proton import UNDESCRIBED, Array, Condition, Data, Delivery, Endpoint, Link, Message, symbol

from tests.servicebus_peer.broker import Broker, LockLostError, NotFoundError, Store, now
from tests.servicebus_peer.codec import (
    AMQP_VALUE,
    APPLICATION_PROPERTIES,
    PROPERTIES,
    ms_timestamp,
    split,
)

LOCK_LOST: Final = "com.microsoft:message-lock-lost"
NOT_FOUND: Final = "amqp:not-found"


def _raw_tag(delivery: Delivery) -> bytes:
    """The delivery tag as bytes (proton's ``Delivery.tag`` decodes it as UTF-8)."""
    tag = cproton.lib.pn_delivery_tag(delivery._impl)
    return bytes(cproton.ffi.unpack(tag.start, tag.size))


def _tag(token: Any) -> bytes:
    """A lock token from a management request → the delivery tag it was issued as: Service Bus
    puts the GUID on the wire in .NET byte order (the SDK reads ``UUID(bytes_le=tag)``)."""
    return uuid.UUID(str(token)).bytes_le


def _request(raw: bytes) -> tuple[Any, dict[str, Any], Any]:
    """(message-id, application properties, amqp-value body) of a CBS/management request."""
    message_id: Any = None
    properties: dict[str, Any] = {}
    body: Any = None
    for section in split(raw):
        if section.code == PROPERTIES and section.value:
            message_id = section.value[0]
        elif section.code == APPLICATION_PROPERTIES and section.value:
            properties = {str(k): v for k, v in dict(section.value).items()}
        elif section.code == AMQP_VALUE:
            body = section.value
    return message_id, properties, body


def _reply(correlation_id: Any, properties: dict[str, Any], body: Any = None) -> bytes:
    message = Message(correlation_id=correlation_id, properties=properties)
    if body is not None:
        message.body = body
        message.inferred = False
    return bytes(message.encode())


class _LinkInfo:
    """What a link is for: ``cbs``/``management`` requests, ``send`` into ``path``, ``receive``
    from ``store``, or ``reply`` (our side of a request/response pair)."""

    def __init__(self, kind: str, path: str, store: Store | None = None) -> None:
        self.kind = kind
        self.path = path
        self.store = store
        self.outbox: deque[bytes] = deque()
        #: lock token → proton delivery, for messages sent on this link and not yet settled.
        self.unsettled: dict[bytes, Delivery] = {}
        #: When the receiver last granted credit: the most recent asker is served first.
        self.credited_at = 0.0
        self.credit = 0


class PeekLockHandler:
    """The part of the peer's proton handler that serves peek-lock from the broker."""

    broker: Broker
    receive_links: list[Link]

    # -- management -------------------------------------------------------------------------

    def _management(self, path: str, raw: bytes) -> bytes:
        message_id, properties, body = _request(raw)
        operation = str(properties.get("operation", ""))
        entity = path[: -len("/$management")]
        body = dict(body or {})
        try:
            store = self.broker.resolve(entity)
            if operation == "com.microsoft:renew-lock":
                tokens = body.get("lock-tokens")
                tokens = list(tokens.elements) if isinstance(tokens, Array) else list(tokens)
                stamp = now()
                with self.broker.lock:
                    until = [store.renew(_tag(t), stamp) for t in tokens]
                expirations = Array(UNDESCRIBED, Data.TIMESTAMP, *[ms_timestamp(u) for u in until])
                return _reply(message_id, {"statusCode": 200}, {"expirations": expirations})
            if operation == "com.microsoft:peek-message":
                first = int(body.get("from-sequence-number", 1))
                count = int(body.get("message-count", 1))
                with self.broker.lock:
                    peeked = [
                        s.message.wire(
                            delivery_count=max(0, s.deliveries - 1), annotations=s.annotations()
                        )
                        for s in store.peek(first, count, now())
                    ]
                if not peeked:
                    return _reply(message_id, {"statusCode": 204})
                return _reply(
                    message_id,
                    {"statusCode": 200},
                    {"messages": [{"message": m} for m in peeked]},
                )
            return _error(message_id, 501, "amqp:not-implemented", f"{operation} is not faked")
        except LockLostError as exc:
            return _error(message_id, 410, LOCK_LOST, str(exc))
        except NotFoundError as exc:
            return _error(message_id, 404, NOT_FOUND, str(exc))

    # -- sending to receivers ---------------------------------------------------------------

    def _pump_all(self) -> None:
        stamp = now()
        with self.broker.lock:
            for store in self.broker.all_stores():
                store.expire(stamp)
        # Service Bus serves the links asking for messages; the fake prefers the one that granted
        # credit last: a receiver blocked in ``receive`` now, not an idle link whose SDK keeps
        # one credit open and would only release the message seconds later.
        links = [
            (link, link.m2s)
            for link in self.receive_links
            if getattr(link, "m2s", None) is not None and link.state & Endpoint.LOCAL_ACTIVE
        ]
        for link, info in sorted(links, key=lambda pair: -pair[1].credited_at):
            self._pump(link, info)
            info.credit = link.credit

    def _pump(self, link: Any, info: _LinkInfo) -> None:
        assert info.store is not None
        while link.credit > 0:
            with self.broker.lock:
                stored = info.store.take(now())
                if stored is None:
                    return
                assert stored.lock_token is not None
                wire = stored.message.wire(
                    delivery_count=stored.deliveries - 1, annotations=stored.annotations()
                )
                token = stored.lock_token
            delivery = link.delivery(token)
            link.send(wire)
            link.advance()
            info.unsettled[token] = delivery

    def _disposition(self, link: Any, info: _LinkInfo, delivery: Delivery) -> None:
        token = _raw_tag(delivery)
        info.unsettled.pop(token, None)
        assert info.store is not None
        state = delivery.remote_state
        remote = delivery.remote
        stamp = now()
        applied: int = state
        try:
            with self.broker.lock:
                if state == Delivery.ACCEPTED:
                    info.store.complete(token, stamp)
                elif state == Delivery.RELEASED:
                    info.store.abandon(token, stamp, counted=False)
                elif state == Delivery.MODIFIED:
                    # undeliverable-here is how the SDK defers; the fake treats it as abandon.
                    info.store.abandon(token, stamp)
                elif state == Delivery.REJECTED:
                    reason, description = _dead_letter_details(remote.condition)
                    info.store.dead_letter_locked(token, stamp, reason, description)
                else:
                    return
        except LockLostError as exc:
            delivery.local.condition = Condition(symbol(LOCK_LOST), str(exc))
            applied = Delivery.REJECTED
        if not delivery.settled:
            if state == Delivery.MODIFIED and applied == state:
                delivery.local.failed = remote.failed
                delivery.local.undeliverable = remote.undeliverable
            delivery.update(applied)
        delivery.settle()
        self._pump_all()


def _dead_letter_details(condition: Condition | None) -> tuple[str, str]:
    if condition is None:
        return "", ""
    info = dict(condition.info or {})
    reason = info.get("DeadLetterReason")
    description = info.get("DeadLetterErrorDescription", condition.description)
    return str(reason or ""), str(description or "")


def _error(message_id: Any, status: int, condition: str, description: str) -> bytes:
    return _reply(
        message_id,
        {
            "statusCode": status,
            "statusDescription": description,
            "errorCondition": symbol(condition),
        },
    )
