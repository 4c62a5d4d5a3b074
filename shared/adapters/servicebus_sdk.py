"""Fixes to the ``azure-servicebus`` SDK: its AMQP connections' sockets, closed when it forgets.

Why
===

The SDK's AMQP layer (azure-servicebus 7.15, ``_pyamqp/aio``) leaves a connection's socket
open on several paths where a link fails, and under the chaos run's dropped connections a
filter held 340 sockets and the processes ran out of file descriptors:

- ``Connection.close`` marks the connection ended when its close handshake fails (the peer
  dropped the connection, which is why it is being closed), and then ``_disconnect`` returns at
  once for an ended connection, so the socket is never closed. The same code is reported
  upstream for azure-eventhub (Azure/azure-sdk-for-python#46830).
- A client whose connection failed while opening has no session yet, and its ``close_async``
  returns at once when there is no session, leaving the half-open connection behind.
- A link that does not open in time is cleaned up with the attempt's deadline, which has
  passed by then: the SDK's clean-up is cancelled before it starts, and the handler is replaced
  with a new one. The old one's connection is never closed at all.

How
===

``apply`` (run when the bus adapter is imported) fixes the first two in place: after a
connection's ``close`` or a client's ``close_async``, however it ended, the socket of the
connection is aborted (at once, without awaiting: the path may be unwinding a cancellation).

The third leaves nothing to hook, so every AMQP client a sender or receiver creates is
remembered on it, and every connection a client opens knows its client.
``release_replaced`` releases the clients the handler has replaced
(``shared.adapters.servicebus_links`` calls it after each SDK call), and ``release`` all of them
once the handler is closed. A released client's connection is aborted, now or, should the
client still be opening it, as soon as it has opened. Aborting a closed socket does nothing,
so on an SDK that closes its sockets itself all of this costs nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

from azure.servicebus.aio import ServiceBusReceiver, ServiceBusSender

#: Marks a method once wrapped, so importing twice does not wrap twice.
_FIXED: Final = "_mati2sentinel_aborts_socket"
#: The attribute on a sender or receiver listing the AMQP clients it created.
_CLIENTS: Final = "_mati2sentinel_amqp_clients"
#: On a client: its connection (behind ``_OwnedConnection``), and whether it was released.
_CONNECTION: Final = "_mati2sentinel_connection"
_RELEASED: Final = "_mati2sentinel_released"
#: On a connection: the client that opened it.
_OWNER: Final = "_mati2sentinel_owner"


def apply() -> None:
    from azure.servicebus._pyamqp.aio._client_async import AMQPClientAsync
    from azure.servicebus._pyamqp.aio._connection_async import Connection

    if getattr(Connection.close, _FIXED, False):
        return
    _abort_after(Connection, "close", lambda connection: connection)
    _abort_after(AMQPClientAsync, "close_async", _own_connection)
    _abort_after(Connection, "open", _released_connection, taken_before=False)
    AMQPClientAsync._connection = _OwnedConnection()
    for handler_class in (ServiceBusReceiver, ServiceBusSender):
        _remember_clients(handler_class)


def release_replaced(handler: ServiceBusReceiver | ServiceBusSender) -> None:
    """Release the AMQP clients ``handler`` created and has since replaced."""
    clients: list[Any] = getattr(handler, _CLIENTS, [])
    current = getattr(handler, "_handler", None)
    for client in [c for c in clients if c is not current]:
        clients.remove(client)
        _release(client)


def release(handler: ServiceBusReceiver | ServiceBusSender) -> None:
    """Release every AMQP client ``handler`` created (it has been closed)."""
    clients: list[Any] = getattr(handler, _CLIENTS, [])
    for client in clients:
        _release(client)
    clients.clear()


def _release(client: Any) -> None:
    client.__dict__[_RELEASED] = True
    _abort(_own_connection(client))


class _OwnedConnection:
    """``AMQPClientAsync._connection``, which also tells the connection its client, so that
    a connection a released client opens is aborted once open."""

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        return None if client is None else client.__dict__.get(_CONNECTION)

    def __set__(self, client: Any, connection: Any) -> None:
        client.__dict__[_CONNECTION] = connection
        if connection is not None:
            connection.__dict__[_OWNER] = client


def _own_connection(client: Any) -> Any:
    return None if getattr(client, "_external_connection", True) else client._connection


def _released_connection(connection: Any) -> Any:
    """``connection`` if its client was released (and so nobody will close it), else None."""
    client = connection.__dict__.get(_OWNER)
    released = client is not None and client.__dict__.get(_RELEASED, False)
    return connection if released and not client._external_connection else None


def _abort_after(
    owner: type, name: str, connection_of: Callable[[Any], Any], *, taken_before: bool = True
) -> None:
    """After ``owner.name``, however it ended, abort the socket of ``connection_of(self)``,
    taken before the call (a client forgets its connection while closing) or after it
    (whether the client was released while its connection opened)."""
    original: Callable[..., Awaitable[None]] = getattr(owner, name)

    @functools.wraps(original)
    async def closing(self: Any, *args: Any, **kwargs: Any) -> None:
        connection = connection_of(self) if taken_before else None
        try:
            await original(self, *args, **kwargs)
        finally:
            _abort(connection if taken_before else connection_of(self))

    setattr(closing, _FIXED, True)
    setattr(owner, name, closing)


def _remember_clients(handler_class: type) -> None:
    original: Callable[..., None] = handler_class._create_handler  # type: ignore[attr-defined]

    @functools.wraps(original)
    def create_handler(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.__dict__.setdefault(_CLIENTS, []).append(self._handler)

    handler_class._create_handler = create_handler  # type: ignore[attr-defined]


def _abort(connection: Any) -> None:
    transport = getattr(connection, "_transport", None)
    writer = getattr(transport, "writer", None)
    if writer is not None:
        writer.transport.abort()
