"""Peek-lock, the fake Service Bus's side of it: what a receive link is sent from the broker, what
the SDK's dispositions do to the locks, and the management operations on them (renew-lock,
update-disposition, peek-message), with the CBS/management request and reply messages they
travel in. The faults of ``faults.py`` that strike settlements and management requests are
applied here too, where the lock they concern is at hand.

Kept apart from the connection handling in amqp.py, whose handler mixes ``PeekLockHandler`` in:
this is where the broker's state meets the wire.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any, Final

import cproton  # type: ignore[import-untyped]  # proton's C binding ships no annotations
from proton import (
    UNDESCRIBED,
    Array,
    Condition,
    Connection,
    Data,
    Delivery,
    Endpoint,
    Link,
    Message,
    symbol,
)

from tests.servicebus_peer.broker import Broker, LockLostError, NotFoundError, Store, now
from tests.servicebus_peer.codec import (
    AMQP_VALUE,
    APPLICATION_PROPERTIES,
    PROPERTIES,
    ms_timestamp,
    split,
)
from tests.servicebus_peer.faults import Fault, FaultKind, FaultPlan, Operation

LOCK_LOST: Final = "com.microsoft:message-lock-lost"
SERVER_BUSY: Final = "com.microsoft:server-busy"
NOT_FOUND: Final = "amqp:not-found"
BUSY_TEXT: Final = "The server is busy. Please retry the operation (fake Service Bus fault)."
RENEW_LOCK: Final = "com.microsoft:renew-lock"
UPDATE_DISPOSITION: Final = "com.microsoft:update-disposition"
PEEK_MESSAGE: Final = "com.microsoft:peek-message"
#: proton's own "no descriptor" sentinel, which its annotations do not admit as one.
_UNDESCRIBED: Final[Any] = UNDESCRIBED
#: What each management operation is, for the faults: the rest are never struck.
MANAGEMENT_OPERATIONS: Final = {
    RENEW_LOCK: Operation.RENEW,
    UPDATE_DISPOSITION: Operation.SETTLE,
    PEEK_MESSAGE: Operation.PEEK,
}


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
    faults: FaultPlan
    receive_links: list[Link]

    def _drop(self, connection: Connection) -> None:
        """Close ``connection``'s socket under the client (amqp.py's handler does it)."""
        raise NotImplementedError

    # -- management -------------------------------------------------------------------------

    def _management(self, path: str, raw: bytes, connection: Connection) -> bytes | None:
        """The reply to one ``$management`` request, or None when a fault dropped the
        connection instead (nothing is to be sent)."""
        message_id, properties, raw_body = _request(raw)
        operation = str(properties.get("operation", ""))
        body: dict[str, Any] = {str(k): v for k, v in dict(raw_body or {}).items()}
        struck = MANAGEMENT_OPERATIONS.get(operation)
        fault = self.faults.take(struck) if struck is not None else None
        if _kind(fault) is FaultKind.SERVER_BUSY:
            return _error(message_id, 503, SERVER_BUSY, BUSY_TEXT)
        if _kind(fault) is FaultKind.DROP and not _applied(fault):
            self._drop(connection)
            return None
        reply = self._answer(
            path[: -len("/$management")],
            operation,
            message_id,
            body,
            lose=_kind(fault) is FaultKind.LOCK_LOST,
        )
        if _kind(fault) is FaultKind.DROP:
            self._drop(connection)
            return None
        return reply

    def _answer(
        self, entity: str, operation: str, message_id: Any, body: dict[str, Any], *, lose: bool
    ) -> bytes:
        try:
            store = self.broker.resolve(entity)
            stamp = now()
            if lose:  # the locks named ran out just before the request arrived
                with self.broker.lock:
                    for token in _tokens(body):
                        store.lose(token, stamp)
            if operation == RENEW_LOCK:
                with self.broker.lock:
                    until = [store.renew(token, stamp) for token in _tokens(body)]
                expirations = Array(_UNDESCRIBED, Data.TIMESTAMP, *[ms_timestamp(u) for u in until])
                return _reply(message_id, {"statusCode": 200}, {"expirations": expirations})
            if operation == UPDATE_DISPOSITION:
                return self._update_disposition(store, message_id, body, stamp)
            if operation == PEEK_MESSAGE:
                return self._peek(store, message_id, body)
            return _error(message_id, 501, "amqp:not-implemented", f"{operation} is not faked")
        except LockLostError as exc:
            return _error(message_id, 410, LOCK_LOST, str(exc))
        except NotFoundError as exc:
            return _error(message_id, 404, NOT_FOUND, str(exc))

    def _update_disposition(
        self, store: Store, message_id: Any, body: dict[str, Any], stamp: float
    ) -> bytes:
        """Settling by lock token, the SDK's way when the link a message came on is gone."""
        status = str(body.get("disposition-status", ""))
        with self.broker.lock:
            for token in _tokens(body):
                if status == "completed":
                    store.complete(token, stamp)
                elif status == "abandoned":
                    store.abandon(token, stamp)
                elif status == "suspended":
                    reason = str(body.get("deadletter-reason") or "")
                    description = str(body.get("deadletter-description") or "")
                    store.dead_letter_locked(token, stamp, reason, description)
                else:
                    return _error(message_id, 501, "amqp:not-implemented", f"{status} is not faked")
        return _reply(message_id, {"statusCode": 200})

    def _peek(self, store: Store, message_id: Any, body: dict[str, Any]) -> bytes:
        first = int(body.get("from-sequence-number", 1))
        count = int(body.get("message-count", 1))
        with self.broker.lock:
            peeked = [
                s.message.wire(delivery_count=max(0, s.deliveries - 1), annotations=s.annotations())
                for s in store.peek(first, count, now())
            ]
        if not peeked:
            return _reply(message_id, {"statusCode": 204})
        return _reply(
            message_id, {"statusCode": 200}, {"messages": [{"message": m} for m in peeked]}
        )

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
        asking = [(link, info) for link, info in links if self._asked(link, info)]
        for link, info in sorted(asking, key=lambda pair: -pair[1].credited_at):
            self._pump(link, info)
            info.credit = link.credit

    def _asked(self, link: Any, info: _LinkInfo) -> bool:
        """Note credit the receiver granted since it was last served (a receive call asking,
        which a fault may strike); whether the link is still to be served."""
        if link.credit <= info.credit:
            return True
        info.credited_at = time.monotonic()
        info.credit = link.credit
        fault = self.faults.take(Operation.RECEIVE)
        if fault is None:
            return True
        if fault.kind is FaultKind.SERVER_BUSY:
            self.receive_links.remove(link)
            link.condition = amqp_error(SERVER_BUSY, BUSY_TEXT)
            link.close()
        else:
            if fault.applied:  # the messages go out, locked, on a connection about to die
                self._pump(link, info)
            self._drop(link.session.connection)
        return False

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

    # -- settling ---------------------------------------------------------------------------

    def _disposition(self, link: Any, info: _LinkInfo, delivery: Delivery) -> None:
        token = _raw_tag(delivery)
        info.unsettled.pop(token, None)
        assert info.store is not None
        state = delivery.remote_state
        if state not in (
            Delivery.ACCEPTED,
            Delivery.RELEASED,
            Delivery.MODIFIED,
            Delivery.REJECTED,
        ):
            return
        fault = self.faults.take(Operation.SETTLE)
        if _kind(fault) is FaultKind.DROP and not _applied(fault):
            self._drop(link.session.connection)
            return
        if _kind(fault) is FaultKind.SERVER_BUSY:  # refused: the lock stays as it was
            delivery.local.condition = amqp_error(SERVER_BUSY, BUSY_TEXT)
            applied: int = Delivery.REJECTED
        else:
            if _kind(fault) is FaultKind.LOCK_LOST:
                with self.broker.lock:
                    info.store.lose(token, now())
            applied = self._settle(info.store, delivery, token)
            if _kind(fault) is FaultKind.DROP:  # done, and the answer never leaves
                self._drop(link.session.connection)
                return
        if not delivery.settled:
            if state == Delivery.MODIFIED and applied == state:
                delivery.local.failed = delivery.remote.failed
                delivery.local.undeliverable = delivery.remote.undeliverable
            delivery.update(applied)
        delivery.settle()
        self._pump_all()

    def _settle(self, store: Store, delivery: Delivery, token: bytes) -> int:
        """Apply the outcome the client asked for; the outcome to answer with (``rejected``
        with ``message-lock-lost`` when the lock is no longer held)."""
        state = delivery.remote_state
        stamp = now()
        try:
            with self.broker.lock:
                if state == Delivery.ACCEPTED:
                    store.complete(token, stamp)
                elif state == Delivery.RELEASED:
                    store.abandon(token, stamp, counted=False)
                elif state == Delivery.MODIFIED:
                    # undeliverable-here is how the SDK defers; the fake treats it as abandon.
                    store.abandon(token, stamp)
                else:
                    reason, description = _dead_letter_details(delivery.remote.condition)
                    store.dead_letter_locked(token, stamp, reason, description)
        except LockLostError as exc:
            delivery.local.condition = amqp_error(LOCK_LOST, str(exc))
            return Delivery.REJECTED
        return int(state)


def amqp_error(condition: str, description: str) -> Condition:
    """An AMQP error as Service Bus words it: with an ``info`` map (a tracking id), which the
    SDK's sender reads unconditionally: without one a refused send hangs it."""
    info: Any = {symbol("com.microsoft:tracking-id"): uuid.uuid4().hex}
    return Condition(symbol(condition), description, info)


def _kind(fault: Fault | None) -> FaultKind | None:
    return None if fault is None else fault.kind


def _applied(fault: Fault | None) -> bool:
    return fault is not None and fault.applied


def _tokens(body: dict[str, Any]) -> list[bytes]:
    """The delivery tags of the lock tokens a management request names."""
    tokens = body.get("lock-tokens")
    items: list[Any] = list(tokens.elements) if isinstance(tokens, Array) else list(tokens or [])
    return [_tag(token) for token in items]


def _dead_letter_details(condition: Condition | None) -> tuple[str, str]:
    if condition is None:
        return "", ""
    info: dict[Any, Any] = dict(condition.info or {})  # type: ignore[arg-type]
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
