"""The Redis clients (RESP2 or RESP3), names and settings the Redis Streams bus works with, and
those it refuses at once: a client that decodes replies or times out while blocking, or a name
that would break its key layout, would otherwise fail later and far from the cause."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Queue, Subscription
from tests.bus.contract import message

pytestmark = pytest.mark.timeout(30)


# ------------------------------------------------------------------------------------------
# Clients, names and settings


async def test_works_with_a_resp3_client(redis_server: LocalRedis) -> None:
    client: Redis = Redis.from_url(redis_server.url, protocol=3)
    try:
        await client.flushall()
        bus = RedisStreamsBus(client, consumer="a")
        queue = Queue("upload.prod")
        async with asyncio.timeout(10):
            await bus.publish(queue, [message(1), message(2)])
            got = await bus.receive(queue, max_messages=5, max_wait_s=1.0)
            assert [d.message_id for d in got] == ["m1", "m2"]
            assert dict(got[0].properties) == dict(message(1).properties)
            await bus.complete(queue, got[:1])
            await bus.dead_letter(queue, got[1], reason="r", description="d")
            [letter] = await bus.dead_letters(queue)
            counts = await bus.counts(queue)
        assert (letter.message_id, letter.reason, dict(letter.properties)) == (
            "m2",
            "r",
            dict(message(2).properties),
        )
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (0, 0, 1)
    finally:
        await client.flushall()
        await client.aclose()


def test_refuses_a_decoding_client(redis_server: LocalRedis) -> None:
    client: Redis = Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStreamsBus(client, consumer="a")


def test_refuses_a_client_that_would_time_out_while_blocking(redis_server: LocalRedis) -> None:
    client: Redis = Redis.from_url(redis_server.url, socket_timeout=0.5)
    with pytest.raises(ValueError, match="socket_timeout"):
        RedisStreamsBus(client, consumer="a")
    RedisStreamsBus(client, consumer="a", lock_duration_s=1.0)  # blocks 0.25 s at a time


@pytest.mark.parametrize(
    "source",
    [Queue("a{b}"), Queue("a/b"), Queue(""), Subscription("t", "x:y{"), Subscription("t/u", "s")],
)
def test_refuses_names_that_break_the_key_layout(
    redis_server: LocalRedis, source: Queue | Subscription
) -> None:
    client: Redis = Redis.from_url(redis_server.url)
    bus = RedisStreamsBus(client, consumer="a")
    with pytest.raises(ValueError, match="name must match"):
        bus.keys(source)


@pytest.mark.parametrize(
    "settings",
    [
        {"consumer": ""},
        {"consumer": "a", "lock_duration_s": 0},
        {"consumer": "a", "max_delivery_count": 0},
        {"consumer": "a", "duplicate_window_s": -1},
        {"consumer": "a", "prefix": "m2s{x}"},
    ],
)
def test_refuses_bad_settings(redis_server: LocalRedis, settings: dict[str, object]) -> None:
    client: Redis = Redis.from_url(redis_server.url)
    with pytest.raises(ValueError, match="must"):
        RedisStreamsBus(client, **settings)  # type: ignore[arg-type]
