"""Opening Redis clients: every service's client packs its commands in C.

redis-py's asyncio connections build each command's wire form in Python, one argument at a
time; a filter batch sends an ``MGET`` of 500 keys and an ``XACK`` of 500 ids, and that
packing was a tenth of a steady-state batch. hiredis (which redis-py already uses to parse
replies) packs a whole command in one call, as redis-py's own synchronous client does.
"""

from __future__ import annotations

from typing import Any, Final

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import DataError


class CPackedConnection(Connection):
    """A TCP connection whose commands hiredis packs."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(args)


class CPackedSSLConnection(SSLConnection):
    """A TLS connection (``rediss://``) whose commands hiredis packs."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(args)


class CPackedUnixConnection(UnixDomainSocketConnection):
    """A Unix-socket connection (``unix://``) whose commands hiredis packs."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(args)


_PACKED: Final[dict[type[AbstractConnection], type[AbstractConnection]]] = {
    Connection: CPackedConnection,
    SSLConnection: CPackedSSLConnection,
    UnixDomainSocketConnection: CPackedUnixConnection,
}


def pack_command(args: tuple[Any, ...]) -> list[bytes]:
    """The wire form of one command, as redis-py's Python packer makes it: a command name with
    spaces (``CONFIG GET``) is split into its words; a value hiredis cannot pack is a
    ``DataError``, as redis-py's encoder reports it."""
    head = args[0]
    if isinstance(head, str):
        args = (*head.encode().split(), *args[1:])
    elif b" " in head:
        args = (*head.split(), *args[1:])
    try:
        return [hiredis.pack_command(args)]
    except TypeError as exc:
        raise DataError(str(exc)) from exc


def connect(url: str, **options: Any) -> Redis:
    """``Redis.from_url(url, **options)``, with the connection class of the URL's scheme
    swapped for its C-packing twin; closing the client closes its pool."""
    pool = ConnectionPool.from_url(url, **options)
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return Redis.from_pool(pool)
