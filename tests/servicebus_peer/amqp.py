"""The AMQP 1.0 side of the fake Service Bus, on python-qpid-proton, in a thread of its own.

What the real ``azure-servicebus`` SDK needs from a peer (specs/local-tooling.md):

- SASL ANONYMOUS on plain TCP (a connection string with ``UseDevelopmentEmulator=true`` turns
  TLS off and keeps the port), then claims-based security: every put-token on ``$cbs`` is
  accepted (status-code 202), whatever the token. Authorisation is not what these tests test.
- ``$cbs`` and ``<entity>/$management`` replies go on the paired link of the same session (the
  link whose source is the request link's target), with ``correlation-id`` = the request's
  ``message-id``; CBS answers in ``status-code``, management in ``statusCode``/``errorCondition``.
- Receive links (the SDK receiving) are peek-lock with receiver-settle-mode *second*: each
  disposition is answered with the outcome applied and ``settled=true``; a settlement the broker
  refuses is answered ``rejected`` with ``com.microsoft:message-lock-lost``. The delivery tag is
  the 16-byte lock token.
- Send links (the SDK sending) take single messages and batches (format 0x80013700: each data
  section is one whole message) and answer ``accepted`` once the broker stored them.
- Management operations: ``com.microsoft:renew-lock`` and ``com.microsoft:peek-message``;
  anything else answers 501 ``amqp:not-implemented``.

All proton objects live on the reactor thread; ``Broker`` is the only state shared with tests.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any, Final

import cproton
from proton import (
    UNDESCRIBED,
    Array,
    Condition,
    Data,
    Delivery,
    Endpoint,
    Handler,
    Link,
    Message,
    symbol,
)
from proton.reactor import Container

from tests.servicebus_peer.broker import (
    Broker,
    LockLostError,
    NotFoundError,
    Store,
    now,
)
from tests.servicebus_peer.codec import (
    AMQP_VALUE,
    APPLICATION_PROPERTIES,
    PROPERTIES,
    BareMessage,
    batch_members,
    ms_timestamp,
    split,
)

log = logging.getLogger(__name__)

LOCK_LOST: Final = "com.microsoft:message-lock-lost"
NOT_FOUND: Final = "amqp:not-found"
TICK_S: Final = 0.02
#: Credit granted to every send link the SDK opens, topped up as messages arrive.
SEND_CREDIT: Final = 500


def _raw_tag(delivery: Delivery) -> bytes:
    """The delivery tag as bytes (proton's ``Delivery.tag`` decodes it as UTF-8)."""
    tag = cproton.lib.pn_delivery_tag(delivery._impl)
    return bytes(cproton.ffi.unpack(tag.start, tag.size))


def _tag(token: Any) -> bytes:
    """A lock token from a management request → the delivery tag it was issued as: Service Bus
    puts the GUID on the wire in .NET byte order (the SDK reads ``UUID(bytes_le=tag)``)."""
    return uuid.UUID(str(token)).bytes_le


def _path(address: str | None) -> str:
    """``amqps://host:port/a/b`` or ``a/b`` → ``a/b``."""
    if not address:
        return ""
    if "://" in address:
        address = address.split("://", 1)[1]
        address = address.split("/", 1)[1] if "/" in address else ""
    return address.strip("/")


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


class _PeerHandler(Handler):
    def __init__(self, broker: Broker, host: str, port: int, ready: threading.Event) -> None:
        super().__init__()
        self.broker = broker
        self.host = host
        self.port = port
        self.ready = ready
        self.stopping = False
        self.connections: list[Any] = []
        self.receive_links: list[Link] = []
        self.failure: BaseException | None = None

    # -- reactor --------------------------------------------------------------------------

    def on_reactor_init(self, event: Any) -> None:
        self.acceptor = event.container.listen(f"{self.host}:{self.port}")
        event.container.schedule(TICK_S, self)
        self.ready.set()

    def on_timer_task(self, event: Any) -> None:
        if self.stopping:
            self.acceptor.close()
            for connection in self.connections:
                if connection.state & Endpoint.LOCAL_ACTIVE:
                    connection.close()
            event.container.stop()
            return
        try:
            self._pump_all()
        except Exception as exc:  # keep serving; the failing test will name it
            log.exception("fake service bus: pump failed")
            self.failure = exc
        event.container.schedule(TICK_S, self)

    # -- connection, session ----------------------------------------------------------------

    def on_connection_bound(self, event: Any) -> None:
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS PLAIN")
        sasl.done(sasl.OK)

    def on_connection_remote_open(self, event: Any) -> None:
        connection = event.connection
        if connection.state & Endpoint.LOCAL_UNINIT:
            connection.container = "fake-servicebus"
            connection.open()
            self.connections.append(connection)

    def on_session_remote_open(self, event: Any) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def on_connection_remote_close(self, event: Any) -> None:
        if event.connection.state & Endpoint.LOCAL_ACTIVE:
            event.connection.close()
        if event.connection in self.connections:
            self.connections.remove(event.connection)

    def on_session_remote_close(self, event: Any) -> None:
        if event.session.state & Endpoint.LOCAL_ACTIVE:
            event.session.close()

    def on_transport_tail_closed(self, event: Any) -> None:
        event.transport.close_head()

    # -- links ------------------------------------------------------------------------------

    def on_link_remote_open(self, event: Any) -> None:
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        source = _path(link.remote_source.address)
        target = _path(link.remote_target.address)
        link.source.address = link.remote_source.address
        link.target.address = link.remote_target.address
        try:
            info = self._classify(link, source, target)
        except NotFoundError as exc:
            link.open()
            link.condition = Condition(symbol(NOT_FOUND), str(exc))
            link.close()
            return
        link.m2s = info
        link.open()
        if link.is_receiver:
            link.flow(SEND_CREDIT)
        elif info.kind == "receive":
            self.receive_links.append(link)

    def _classify(self, link: Link, source: str, target: str) -> _LinkInfo:
        if link.is_receiver:  # the SDK sends on it
            if target == "$cbs":
                return _LinkInfo("cbs", target)
            if target.endswith("/$management"):
                return _LinkInfo("management", target)
            if not self.broker.is_sendable(target):
                raise NotFoundError(f"the messaging entity {target!r} could not be found")
            return _LinkInfo("send", target)
        if source == "$cbs" or source.endswith("/$management"):
            return _LinkInfo("reply", source)
        return _LinkInfo("receive", source, self.broker.resolve(source))

    def on_link_remote_close(self, event: Any) -> None:
        link = event.link
        if link in self.receive_links:
            self.receive_links.remove(link)
        if link.state & Endpoint.LOCAL_ACTIVE:
            link.close()

    def on_link_flow(self, event: Any) -> None:
        link = event.link
        info: _LinkInfo | None = getattr(link, "m2s", None)
        if info is None or not link.is_sender:
            return
        if info.kind == "reply":
            self._flush(link, info)
        elif info.kind == "receive":
            if link.credit > info.credit:
                info.credited_at = time.monotonic()
            self._pump(link, info)
            info.credit = link.credit
            if link.drain_mode and link.credit > 0:
                link.drained()  # nothing more to give: hand the credit back (SDK closes)

    # -- deliveries -------------------------------------------------------------------------

    def on_delivery(self, event: Any) -> None:
        delivery = event.delivery
        link = delivery.link
        info: _LinkInfo | None = getattr(link, "m2s", None)
        if info is None:
            return
        try:
            if link.is_receiver:
                self._incoming(link, info, delivery)
            elif delivery.updated:
                self._disposition(link, info, delivery)
        except Exception as exc:
            log.exception("fake service bus: delivery failed")
            self.failure = exc

    def _incoming(self, link: Any, info: _LinkInfo, delivery: Delivery) -> None:
        if not delivery.readable or delivery.partial:
            return
        raw = bytes(link.recv(delivery.pending) or b"")
        link.advance()
        if info.kind == "send":
            members = batch_members(raw)
            stamp = now()
            for member in members if members is not None else [raw]:
                self.broker.publish(info.path, BareMessage.parse(member), stamp)
            self._pump_all()
        elif info.kind == "cbs":
            message_id, _, _ = _request(raw)
            self._send_reply(
                link,
                info.path,
                _reply(message_id, {"status-code": 202, "status-description": "Accepted"}),
            )
        elif info.kind == "management":
            self._send_reply(link, info.path, self._management(info.path, raw))
        if not delivery.settled:
            delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        if link.credit < SEND_CREDIT // 2:  # top up rarely: every flow frame costs the SDK a poll
            link.flow(SEND_CREDIT - link.credit)

    def _send_reply(self, request_link: Any, path: str, reply: bytes) -> None:
        session = request_link.session
        link = session.connection.link_head(Endpoint.LOCAL_ACTIVE)
        while link is not None:
            info: _LinkInfo | None = getattr(link, "m2s", None)
            if (
                link.session == session
                and link.is_sender
                and info is not None
                and info.kind == "reply"
                and info.path == path
            ):
                info.outbox.append(reply)
                self._flush(link, info)
                return
            link = link.next(Endpoint.LOCAL_ACTIVE)
        log.warning("fake service bus: no reply link for %s", path)

    def _flush(self, link: Any, info: _LinkInfo) -> None:
        while info.outbox and link.credit > 0:
            delivery = link.delivery(uuid.uuid4().bytes)
            link.send(info.outbox.popleft())
            link.advance()
            delivery.settle()

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


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PeerThread:
    """Runs the proton reactor serving ``broker`` on ``host:port`` until ``stop``."""

    def __init__(self, broker: Broker, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._ready = threading.Event()
        self._handler = _PeerHandler(broker, self.host, self.port, self._ready)
        self._container = Container(self._handler)
        self._thread = threading.Thread(target=self._run, name="fake-servicebus", daemon=True)

    def _run(self) -> None:
        try:
            self._container.run()
        except Exception as exc:  # surfaced by ``failure``
            log.exception("fake service bus: reactor died")
            self._handler.failure = exc
        finally:
            self._ready.set()

    @property
    def failure(self) -> BaseException | None:
        return self._handler.failure

    def start(self, timeout_s: float = 5.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the fake Service Bus did not start")

    def stop(self, timeout_s: float = 5.0) -> None:
        self._handler.stopping = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError("the fake Service Bus did not stop")


__all__ = ["PeerThread", "free_port"]
