"""Opening Redis clients: every service's client packs its commands in C, and verifies TLS.

redis-py's asyncio connections build each command's wire form in Python, one argument at a
time; a filter batch sends an ``MGET`` of 500 keys and an ``XACK`` of 500 ids, and that
packing was a tenth of a steady-state batch. hiredis (which redis-py already uses to parse
replies) packs a whole command in one call, as redis-py's own synchronous client does.

redis-py also takes every query parameter of the URL as a connection keyword, so
``rediss://…?ssl_cert_reqs=none`` would switch certificate checks off. ``connect`` refuses such
a URL with the line ``REDIS_URL`` gets at start-up (``shared.core.setting_values.redis_url``),
and a ``rediss://`` connection verifies the certificate and the host name whatever keywords
it was given.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
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

from shared.core import setting_values
from shared.core.errors import ConfigError

#: Either client works: every script and multi-key operation stays inside one hash slot.
RedisClient: TypeAlias = "Redis | RedisCluster"


class CPackedConnection(Connection):
    """A TCP connection whose commands hiredis packs."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(args)


class CPackedSSLConnection(SSLConnection):
    """A TLS connection (``rediss://``) whose commands hiredis packs, and whose context checks
    the certificate and the host name at TLS 1.2 or later, whatever it was configured with."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(args)

    def _connection_arguments(self) -> Mapping[str, Any]:
        arguments = dict(super()._connection_arguments())
        arguments["ssl"] = verifying(arguments["ssl"])
        return arguments


def verifying(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` with verification on (in this order: Python refuses host-name checks
    without a required certificate), and without the key log ``SSLKEYLOGFILE`` gives every
    ``ssl.create_default_context()``: a file of session keys decrypts the Redis password and
    every message on the wire."""
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.minimum_version = max(context.minimum_version, ssl.TLSVersion.TLSv1_2)
    context.keylog_filename = None  # type: ignore[assignment]  # typeshed: str; None is "off"
    return context


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
    swapped for its C-packing (and, for TLS, always verifying) twin; closing the client closes
    its pool. A URL whose query string would weaken TLS is a ``ConfigError``."""
    try:
        setting_values.redis_url(url)
    except setting_values.Refused as refused:
        raise ConfigError([setting_values.refused_line("REDIS_URL", url, refused)]) from None
    except ValueError:
        pass  # another scheme: redis-py's own error says which ones it takes
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
