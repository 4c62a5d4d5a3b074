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
- Management operations: ``com.microsoft:renew-lock``, ``com.microsoft:update-disposition``
  (settling by lock token, which the SDK falls back to when a message's link is gone) and
  ``com.microsoft:peek-message``; anything else answers 501 ``amqp:not-implemented``.
- Faults (faults.py) strike sends and receives here, settlements and management requests in
  peek_lock.py; a dropped connection is a socket closed without an AMQP ``close``.

All proton objects live on the reactor thread; ``Broker`` is the only state shared with tests.

Peek-lock itself (what receive links are sent, dispositions, the management operations) is in
peek_lock.py; here are the connection, its sessions and links, and the thread that runs them.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from typing import Any, Final

from proton import Connection, Delivery, Endpoint, Handler, Link
from proton.reactor import Container

from tests.servicebus_peer.broker import Broker, NotFoundError, now
from tests.servicebus_peer.codec import BareMessage, batch_members
from tests.servicebus_peer.faults import FaultKind, FaultPlan, Operation
from tests.servicebus_peer.peek_lock import (
    BUSY_TEXT,
    NOT_FOUND,
    SERVER_BUSY,
    PeekLockHandler,
    _LinkInfo,
    _reply,
    _request,
    amqp_error,
)

log = logging.getLogger(__name__)

TICK_S: Final = 0.02
#: Credit granted to every send link the SDK opens, topped up as messages arrive.
SEND_CREDIT: Final = 500


def _path(address: str | None) -> str:
    """``amqps://host:port/a/b`` or ``a/b`` → ``a/b``."""
    if not address:
        return ""
    if "://" in address:
        address = address.split("://", 1)[1]
        address = address.split("/", 1)[1] if "/" in address else ""
    return address.strip("/")


class _PeerHandler(PeekLockHandler, Handler):
    def __init__(
        self, broker: Broker, faults: FaultPlan, host: str, port: int, ready: threading.Event
    ) -> None:
        super().__init__()
        self.broker = broker
        self.faults = faults
        self.host = host
        self.port = port
        self.ready = ready
        self.stopping = False
        self.connections: list[Connection] = []
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

    def on_transport_closed(self, event: Any) -> None:
        connection = event.connection
        if connection is not None:
            self._forget(connection)

    def _drop(self, connection: Connection) -> None:
        """Close the client's socket without an AMQP ``close``, as a failing gateway does.
        Its links serve nobody from now on; the locks they hold run out in their own time."""
        self._forget(connection)
        transport = connection.transport
        if transport is not None:
            transport.close_tail()
            transport.close_head()

    def _forget(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
        self.receive_links = [
            link for link in self.receive_links if link.session.connection != connection
        ]

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
            link.condition = amqp_error(NOT_FOUND, str(exc))
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
            if not self._asked(link, info):
                return
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
        outcome = Delivery.ACCEPTED
        if info.kind == "send":
            fault = self.faults.take(Operation.SEND)
            if fault is not None and fault.kind is FaultKind.SERVER_BUSY:
                delivery.local.condition = amqp_error(SERVER_BUSY, BUSY_TEXT)
                outcome = Delivery.REJECTED
            elif fault is not None:  # a drop: the sender never hears whether it was stored
                if fault.applied:
                    self._store(info.path, raw)
                self._drop(link.session.connection)
                return
            else:
                self._store(info.path, raw)
        elif info.kind == "cbs":
            message_id, _, _ = _request(raw)
            self._send_reply(
                link,
                info.path,
                _reply(message_id, {"status-code": 202, "status-description": "Accepted"}),
            )
        elif info.kind == "management":
            reply = self._management(info.path, raw, link.session.connection)
            if reply is None:  # a fault dropped the connection
                return
            self._send_reply(link, info.path, reply)
        if not delivery.settled:
            delivery.update(outcome)
        delivery.settle()
        if link.credit < SEND_CREDIT // 2:  # top up rarely: every flow frame costs the SDK a poll
            link.flow(SEND_CREDIT - link.credit)

    def _store(self, path: str, raw: bytes) -> None:
        members = batch_members(raw)
        stamp = now()
        for member in members if members is not None else [raw]:
            self.broker.publish(path, BareMessage.parse(member), stamp)
        self._pump_all()

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


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PeerThread:
    """Runs the proton reactor serving ``broker`` on ``host:port`` until ``stop``, meeting
    events with the faults of ``faults`` (none when not given)."""

    def __init__(
        self,
        broker: Broker,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        faults: FaultPlan | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._ready = threading.Event()
        self._handler = _PeerHandler(
            broker, faults or FaultPlan(), self.host, self.port, self._ready
        )
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
