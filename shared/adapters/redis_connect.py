"""Opening Redis clients: every service's client packs its commands in C.

redis-py's asyncio connections build each command's wire form in Python, one argument at a
time; a filter batch sends an ``MGET`` of 500 keys and an ``XACK`` of 500 ids, and that
packing was a tenth of a steady-state batch. hiredis (which redis-py already uses to parse
replies) packs a whole command in one call, as redis-py's own synchronous client does.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import DataError

#: Either client works: every script and multi-key operation stays inside one hash slot.
RedisClient: TypeAlias = "Redis | RedisCluster"


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


def resilient(url: str, *, socket_timeout_s: float, retries: int = 3, **options: Any) -> Redis:
    """A client that bounds every command by ``socket_timeout_s`` (a hung Redis is an error,
    not a hang) and resends a command a few times, quickly, after a dropped connection: after
    a Redis restart or failover the pooled connections are dead, and the first command on each
    would fail otherwise. Every write the services make is idempotent or deduplicated
    (counters aside), so a resend is harmless."""
    options.setdefault("socket_connect_timeout", socket_timeout_s)
    return connect(
        url,
        socket_timeout=socket_timeout_s,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries),
        **options,
    )


def connection_option(client: RedisClient, name: str) -> Any:
    """A connection setting of ``client`` (``decode_responses``, ``socket_timeout``), or None
    where the client does not say (a cluster client)."""
    getter = getattr(client, "get_connection_kwargs", None)
    if getter is None:
        return None
    return getter().get(name)
