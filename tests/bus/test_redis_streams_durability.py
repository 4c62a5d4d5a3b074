"""What the Redis Streams bus keeps when Redis does not: nothing published is lost to a
SIGKILL-ed server coming back from its AOF, duplicate detection holds for exactly one window,
a lost stream comes back on the next receive, and a server that is down is reported as
``BusUnavailable`` without the password, then used again once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.cli.redis_server import LocalRedis
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Queue, Subscription, Topic
from shared.core.errors import BusUnavailable
from tests.bus.contract import ids, message
from tests.bus.redis_streams_rig import _text, receive_all

pytestmark = pytest.mark.timeout(30)


# ------------------------------------------------------------------------------------------
# A server of the test's own, and a client that fails fast


def quick_client(url: str) -> Redis:
    """No retries and short timeouts, so a dead server fails fast."""
    return Redis.from_url(
        url, socket_timeout=3, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A redis-server of this test's own, which it may kill."""
    server = LocalRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


# ------------------------------------------------------------------------------------------
# Durability


async def test_sigkill_after_publish_loses_nothing(own_redis: LocalRedis) -> None:
    queue = Queue("upload.prod")
    client = quick_client(own_redis.url)
    bus = RedisStreamsBus(client, consumer="before", lock_duration_s=0.3)
    async with asyncio.timeout(10):
        await bus.ensure(queue)
        for start in range(0, 300, 100):
            await bus.publish(queue, [message(n) for n in range(start, start + 100)])
        held = await bus.receive(queue, max_messages=10, max_wait_s=1.0)
        await bus.complete(queue, held[:5])  # m0..m4 done; m5..m9 locked when Redis dies
    await client.aclose()

    own_redis.kill()
    own_redis.start()

    client = quick_client(own_redis.url)
    try:
        bus = RedisStreamsBus(client, consumer="after", lock_duration_s=0.3)
        got = await receive_all(bus, queue, want=295)
        async with asyncio.timeout(5):
            while len(got) < 295:  # the five that were locked come back when their lock ends
                got += await bus.receive(queue, max_messages=10, max_wait_s=1.0)
        assert sorted(d.message_id for d in got) == sorted(f"m{n}" for n in range(5, 300))
        redelivered = {d.message_id: d.delivery_count for d in got if d.delivery_count > 1}
        assert redelivered == {f"m{n}": 2 for n in range(5, 10)}
        # Duplicate detection survived too: the first page published again adds nothing.
        async with asyncio.timeout(10):
            await bus.publish(queue, [message(n) for n in range(100)])
            await bus.complete(queue, got)
            counts = await bus.counts(queue)
        assert (counts.depth, counts.in_flight) == (0, 0)
    finally:
        await client.aclose()


async def test_duplicates_are_dropped_for_exactly_one_window_across_slot_changes(
    redis_client: Redis,
) -> None:
    """Ids are noted in two hashes that take turns, one window each; whichever slot a
    republish falls in, a copy is dropped while the original is less than a window old and
    kept after, and a hash is emptied when its turn comes again (memory stays bounded)."""
    window = 2.0
    bus = RedisStreamsBus(redis_client, consumer="a", duplicate_window_s=window)
    queue = Queue("upload.prod")
    keys = bus.keys(queue)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(30):
        await bus.ensure(queue)
        published = loop.time()
        await bus.publish(queue, [message(1)])
        kept = 1
        # Copies at about 0.1, 0.4 and 0.7 windows: some cross a slot change, none is kept
        # (unless this shared machine stalls past the window: then that copy is new again).
        for at in (0.1, 0.4, 0.7, 1.1):
            await asyncio.sleep(max(0.0, published + at * window - loop.time()))
            sent = loop.time()
            await bus.publish(queue, [message(1)])
            if sent - published >= window:
                kept, published = kept + 1, sent
        await bus.publish(queue, [message(2)])
        got = await receive_all(bus, queue, want=kept + 1)
        assert ids(got) == ["m1"] * kept + ["m2"]
        assert kept >= 2  # the copy a window on (1.1) was kept
        await bus.complete(queue, got)
        # Two windows on, a publish empties the hash whose turn it is before noting its ids.
        await asyncio.sleep(2.1 * window)
        await bus.publish(queue, [message(3)])
        noted = [{_text(k) for k in await redis_client.hkeys(key)} for key in keys.duplicates]
        assert {"", "m3"} in noted  # the slot marker and the one id of this slot


# ------------------------------------------------------------------------------------------
# Losing the server or its data


async def test_a_lost_stream_is_recreated_on_receive(redis_client: Redis) -> None:
    bus = RedisStreamsBus(redis_client, consumer="a")
    queue, subscription = Queue("upload.prod"), Subscription("indicators", "prod")
    async with asyncio.timeout(10):
        assert await bus.receive(queue, max_messages=1, max_wait_s=0.0) == []
        await bus.publish(queue, [message(1)])
        assert len(await bus.receive(queue, max_messages=1, max_wait_s=1.0)) == 1
        # Receiving from a subscription registers it, so the topic feeds it from then on.
        assert await bus.receive(subscription, max_messages=1, max_wait_s=0.0) == []
        await bus.publish(Topic("indicators"), [message(2)])
        [got] = await bus.receive(subscription, max_messages=1, max_wait_s=1.0)
    assert got.message_id == "m2"


async def test_bus_unavailable_when_redis_is_down(own_redis: LocalRedis) -> None:
    password = "s3cret-bus-password"
    admin = quick_client(own_redis.url)
    await admin.config_set("requirepass", password)
    await admin.aclose()
    url = own_redis.url.replace("redis://", f"redis://:{password}@")
    bus = RedisStreamsBus.from_url(url, consumer="a", retries=0, socket_timeout_s=2.0)
    queue = Queue("upload.prod")
    try:
        async with asyncio.timeout(10):
            await bus.ping()
            await bus.publish(queue, [message(1)])

        own_redis.kill()

        calls = [
            bus.ping(),
            bus.publish(queue, [message(2)]),
            bus.receive(queue, max_messages=1, max_wait_s=0.5),
            bus.counts(queue),
            bus.dead_letters(queue),
            bus.ensure(Subscription("indicators", "prod")),
        ]
        for call in calls:
            with pytest.raises(BusUnavailable) as failed:
                async with asyncio.timeout(10):
                    await call
            assert password not in str(failed.value)
            assert isinstance(failed.value.__cause__, Exception)

        own_redis.start()  # CONFIG SET is not in the AOF: back without a password, with m1
        async with asyncio.timeout(10):
            [got] = await bus.receive(queue, max_messages=5, max_wait_s=1.0)
        assert got.message_id == "m1"
    finally:
        await bus.aclose()
