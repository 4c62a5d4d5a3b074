"""What every state adapter promises, whichever it is: one round trip per batch, every key of a
destination in one Redis Cluster slot, and Redis failures translated by what the caller must
do."""

from __future__ import annotations

import binascii
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
)

from services.cli.redis_server import LocalRedis, free_port
from shared.adapters.destination_state import (
    CircuitState,
    DestinationState,
)
from shared.adapters.feed_state import FeedState, FetcherLease
from shared.adapters.rate_budget import RateBudget
from shared.adapters.state_redis import destination_prefix, translated
from shared.core.errors import FatalError, StateRefused, StateUnavailable, TransientError
from shared.core.fingerprint import SeenEntry
from tests.state.samples import FP_A, FP_B, ids, server_now_close_to_ours

# --- cost: one round trip per batch ----------------------------------------------------------


class CountingConnection(Connection):
    """Counts writes to the socket: each is one request the client then waits on, i.e. one
    round trip (a pipeline would be one write too)."""

    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)


async def calls(client: Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_batches_cost_one_round_trip_whatever_their_size(
    redis_server: LocalRedis, redis_client: Redis
) -> None:
    """Measured twice, honestly:

    - client side, the writes the adapter's connection makes (``CountingConnection``);
    - server side, the top-level commands it received (``INFO commandstats``: ``mget`` and
      ``evalsha`` calls). ``total_commands_processed`` is not used: it also counts the
      GET/SET each script runs inside the server, which cost no round trip.

    The first call of a script on a server costs two more round trips (``NOSCRIPT``, then
    ``SCRIPT LOAD``), once per process and server; the warm-up below pays it.
    """
    client: Redis = Redis.from_url(redis_server.url, connection_class=CountingConnection)
    try:
        state = DestinationState(client, "acme")
        now = server_now_close_to_ours()
        batch = ids(500)
        entries = [(i, SeenEntry(FP_A, now + timedelta(days=1))) for i in batch]
        await state.seen(batch[:1])
        await state.claim([(batch[0], FP_B)], ttl_s=60)
        await state.commit(entries[:1], now=now)
        await state.release([(batch[0], FP_B)])
        await state.count({"warm": 1})

        cases: list[tuple[Callable[[], Awaitable[object]], str, int]] = [
            (lambda: state.seen(batch), "mget", 1),
            (lambda: state.claim([(i, FP_A) for i in batch], ttl_s=60), "evalsha", 1),
            (lambda: state.claims(batch), "mget", 1),
            (lambda: state.commit(entries, now=now), "evalsha", 1),
            (lambda: state.release([(i, FP_A) for i in batch]), "evalsha", 1),
            (lambda: state.count({f"reason_{n}": 1 for n in range(20)}), "evalsha", 1),
            (lambda: state.forget(batch), "del", 1),
        ]
        for operation, command, expected_writes in cases:
            before = await calls(redis_client, command)
            CountingConnection.writes = 0
            await operation()
            assert CountingConnection.writes == expected_writes, command
            assert await calls(redis_client, command) - before == 1, command
    finally:
        await client.aclose()

    # What the filter does per batch of 500: one seen() and one claim() -> 2 / 500 = 0.004.
    assert 2 / len(batch) <= 0.05


# --- hash slots ------------------------------------------------------------------------------


def keyslot(key: bytes) -> int:
    """Redis Cluster's CLUSTER KEYSLOT: CRC16/XMODEM of the hash tag (or the key) mod 16384."""
    start = key.find(b"{")
    if start > -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % 16384


async def test_every_key_of_a_destination_hashes_to_one_slot(redis_client: Redis) -> None:
    assert keyslot(b"foo") == 12182, "matches CLUSTER KEYSLOT foo"
    now = server_now_close_to_ours()
    batch = ids(50)
    state = DestinationState(redis_client, "acme")
    await state.claim([(i, FP_A) for i in batch], ttl_s=60)
    await state.commit([(i, SeenEntry(FP_B, now + timedelta(days=1))) for i in batch], now=now)
    await state.count({"forwarded": 1})
    await state.set_circuit(CircuitState.OPEN, "x")
    budget = RateBudget(redis_client, "acme")
    await budget.acquire()
    await budget.pause(30)
    lease = FetcherLease(redis_client, owner="pod-a")
    await lease.acquire()
    feed = FeedState(redis_client)
    await feed.advance(now, "run-1")
    await feed.record_run({"fetched": 1})
    await feed.count({"fetched": 1})

    keys = [key async for key in redis_client.scan_iter(count=1000)]
    tags = [re.match(rb"m2s:(\{[^}]+\}):", key) for key in keys]
    assert {tag.group(1) for tag in tags if tag} == {b"{acme}", b"{fetcher}"}
    assert all(tags), "every key carries a hash tag"
    slots: dict[bytes, set[int]] = {}
    for key in keys:
        slots.setdefault(key.split(b":")[1], set()).add(keyslot(key))
    assert all(len(found) == 1 for found in slots.values()), slots
    assert {key.decode() for key in keys if b"{acme}" in key} >= {
        destination_prefix("acme") + suffix
        for suffix in ("counters", "circuit", "rate:log", "rate:pause")
    }
    assert len([key for key in keys if b"{fetcher}" in key]) == 4


# --- errors ----------------------------------------------------------------------------------


async def test_unreachable_redis_is_transient() -> None:
    client = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: DestinationState(client, "acme").seen(ids(2)),
            lambda: DestinationState(client, "acme").claim([("x", FP_A)], ttl_s=1),
            lambda: FeedState(client).checkpoint(),
            lambda: RateBudget(client, "acme").acquire(),
            lambda: FetcherLease(client, owner="a").holder(),
        ]
        for operation in operations:
            with pytest.raises(StateUnavailable) as caught:
                await operation()
            assert isinstance(caught.value, TransientError)
            assert caught.value.__cause__ is not None
    finally:
        await client.aclose()


async def test_a_foreign_type_under_our_singleton_keys_is_refused(
    redis_client: Redis,
) -> None:
    state = DestinationState(redis_client, "acme")
    await redis_client.set(state.counters_key, b"not a hash")

    with pytest.raises(StateRefused) as caught:
        await state.count({"forwarded": 1})
    assert isinstance(caught.value, FatalError)
    assert "WRONGTYPE" in str(caught.value)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (TimeoutError("read timed out"), StateUnavailable),
        (BusyLoadingError("loading"), StateUnavailable),
        (ReadOnlyError("You can't write against a read only replica."), StateUnavailable),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), StateUnavailable),
        (ClusterDownError("The cluster is down"), StateUnavailable),
        (SlotNotCoveredError("slot 5 not covered"), StateUnavailable),
        (ResponseError("BUSY Redis is busy running a script."), StateUnavailable),
        (
            ResponseError("READONLY You can't write against a read only replica. script: x"),
            StateUnavailable,
        ),
        (ConnectionResetError("reset by peer"), StateUnavailable),
        (
            NoPermissionError("this user has no permissions to run the 'evalsha' command"),
            StateRefused,
        ),
        (
            ResponseError("ERR user_script:3: Script attempted to access nonexistent global"),
            StateRefused,
        ),
    ],
)
def test_redis_errors_are_translated_by_what_the_caller_must_do(
    raised: Exception, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as caught, translated("test"):
        raise raised
    assert caught.value.__cause__ is raised
