"""The Redis Streams bus: the shared contract, and what only Redis can show (its keys, its
memory, a SIGKILL-ed server coming back from its AOF)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from services.cli.redis_server import LocalRedis
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import (
    MAX_DELIVERY_REASON,
    Bus,
    Delivery,
    Message,
    Queue,
    Subscription,
    Topic,
)
from shared.core.errors import BusUnavailable, LockLost
from tests.bus.contract import BusContract, BusFactory, BusSettings, ids, message

pytestmark = pytest.mark.timeout(30)


class TestRedisStreamsContract(BusContract):
    @pytest.fixture
    async def bus_factory(self, redis_client: Redis) -> AsyncIterator[BusFactory]:
        made: list[RedisStreamsBus] = []

        async def factory(consumer: str, settings: BusSettings) -> Bus:
            bus = RedisStreamsBus(
                redis_client,
                consumer=consumer,
                lock_duration_s=settings.lock_duration_s,
                max_delivery_count=settings.max_delivery_count,
                duplicate_window_s=settings.duplicate_window_s,
            )
            made.append(bus)
            return bus

        yield factory
        for bus in made:
            await bus.aclose()


# ------------------------------------------------------------------------------------------
# Fixtures for the Redis-only tests


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


async def receive_all(bus: RedisStreamsBus, source: Queue, *, want: int) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(20):
        while len(got) < want:
            batch = await bus.receive(source, max_messages=500, max_wait_s=1.0)
            if not batch:
                break
            got += batch
    return got


async def take_m1(bus: RedisStreamsBus, queue: Queue) -> Delivery:
    """Publish m1 to ``queue`` and receive it: the delivery a test then settles, dead-letters
    or forges."""
    await bus.publish(queue, [message(1)])
    [got] = await bus.receive(queue, max_messages=1, max_wait_s=1.0)
    return got


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


async def test_completing_a_batch_leaves_the_consumers_other_batches_alone(
    redis_client: Redis,
) -> None:
    """``complete`` checks a batch's locks in one read of the consumer's pending range: a
    batch received ahead (ids inside or after that range) stays held, and a delivery named
    twice is completed once and reported lost the second time."""
    bus = RedisStreamsBus(redis_client, consumer="a", duplicate_window_s=0, lock_duration_s=30)
    queue = Queue("upload.prod")
    async with asyncio.timeout(20):
        await bus.ensure(queue)
        await bus.publish(queue, [message(n) for n in range(30)])
        first = await receive_all(bus, queue, want=10)
        ahead = await receive_all(bus, queue, want=20)
        chosen = first[::2] + ahead[5:7]
        await bus.complete(queue, chosen)
        assert (await bus.counts(queue)).in_flight == 30 - len(chosen)
        with pytest.raises(LockLost) as lost:
            await bus.complete(queue, [first[1], first[1]])
        assert list(lost.value.message_ids) == [first[1].message_id]
        await bus.complete(queue, [d for d in first + ahead if d not in chosen and d != first[1]])
        counts = await bus.counts(queue)
        assert (counts.depth, counts.in_flight) == (0, 0)


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
# Memory and keys


async def test_completed_entries_are_deleted_so_memory_stays_flat(redis_client: Redis) -> None:
    bus = RedisStreamsBus(redis_client, consumer="a", duplicate_window_s=0)
    queue = Queue("upload.prod")
    stream = bus.keys(queue).stream
    usage: list[int] = []
    async with asyncio.timeout(20):
        await bus.ensure(queue)
        for round_ in range(5):
            await bus.publish(queue, [message(round_ * 1000 + n) for n in range(400)])
            got = await receive_all(bus, queue, want=400)
            assert len(got) == 400
            await bus.complete(queue, got)
            assert await redis_client.xlen(stream) == 0
            [group] = await redis_client.xinfo_groups(stream)
            assert group["pending"] == 0
            usage.append(int(await redis_client.memory_usage(stream) or 0))
        assert await redis_client.dbsize() == 1  # the stream itself; no dup keys at window 0

    assert max(usage) <= usage[0] * 1.5 + 1024


async def test_keys_of_one_entity_share_one_hash_slot(redis_client: Redis) -> None:
    # Redis' own examples (CLUSTER KEYSLOT docs): the slot function redis-py routes with.
    assert key_slot(b"somekey") == 11058
    assert key_slot(b"foo{hash_tag}") == key_slot(b"bar{hash_tag}") == 2515

    bus = RedisStreamsBus(redis_client, consumer="a")
    queue, subscription = Queue("upload.prod"), Subscription("indicators", "prod")
    async with asyncio.timeout(10):
        for source in (queue, subscription):
            await bus.ensure(source)
        await bus.publish(queue, [message(1), message(2)])
        await bus.publish(Topic("indicators"), [message(3), message(4)])
        for source in (queue, subscription):
            first, _ = await bus.receive(source, max_messages=2, max_wait_s=1.0)
            await bus.dead_letter(source, first, reason="r", description="d")
        keys = sorted([_text(k) async for k in redis_client.scan_iter(match="m2s:*")])

    by_entity: dict[str, set[int]] = {}
    for key in keys:
        tag = key[key.index("{") + 1 : key.index("}")]
        by_entity.setdefault(tag, set()).add(key_slot(key.encode()))
    assert set(by_entity) == {"upload.prod", "indicators/prod", "indicators"}
    assert all(len(slots) == 1 for slots in by_entity.values())
    queue_keys = [k for k in keys if "{upload.prod}" in k]
    assert {"m2s:{upload.prod}:stream", "m2s:{upload.prod}:dlq"} <= set(queue_keys)
    assert {"m2s:{upload.prod}:dup:0", "m2s:{upload.prod}:dup:1"} & set(queue_keys)
    assert "m2s:{indicators}:subscriptions" in keys


async def test_publish_to_a_topic_without_subscriptions_stores_nothing(
    redis_client: Redis,
) -> None:
    bus = RedisStreamsBus(redis_client, consumer="a")
    async with asyncio.timeout(5):
        await bus.publish(Topic("indicators"), [message(1)])
    assert await redis_client.dbsize() == 0


async def test_large_batch_spans_script_chunks_in_order(redis_client: Redis) -> None:
    bus = RedisStreamsBus(redis_client, consumer="a")
    queue = Queue("upload.prod")
    async with asyncio.timeout(20):
        await bus.publish(queue, [message(n) for n in range(1234)])
        got = await receive_all(bus, queue, want=1234)
    assert [d.message_id for d in got] == [f"m{n}" for n in range(1234)]


# ------------------------------------------------------------------------------------------
# Locks beyond the contract


async def test_stale_delivery_cannot_settle_its_redelivery_in_the_same_process(
    redis_client: Redis,
) -> None:
    bus = RedisStreamsBus(redis_client, consumer="only", lock_duration_s=0.3)
    queue = Queue("upload.prod")
    async with asyncio.timeout(10):
        stale = await take_m1(bus, queue)
        [again] = await bus.receive(queue, max_messages=1, max_wait_s=3.0)
        assert again.delivery_count == 2
        with pytest.raises(LockLost):
            await bus.complete(queue, [stale])
        await bus.complete(queue, [again])


async def test_abandoned_entry_behind_a_long_pending_list_comes_back_at_once(
    redis_client: Redis,
) -> None:
    a = RedisStreamsBus(redis_client, consumer="a")
    b = RedisStreamsBus(redis_client, consumer="b")
    queue = Queue("upload.prod")
    async with asyncio.timeout(10):
        await a.publish(queue, [message(n) for n in range(200)])
        held = await receive_all(a, queue, want=200)
        await a.abandon(queue, [held[-1]])
        # XAUTOCLAIM scans 10 × count pending entries per call; count 1 must still find it.
        [back] = await b.receive(queue, max_messages=1, max_wait_s=0.0)
    assert (back.message_id, back.delivery_count) == ("m199", 2)


async def test_dead_lettered_by_expiry_keeps_what_was_sent(redis_client: Redis) -> None:
    bus = RedisStreamsBus(redis_client, consumer="a", lock_duration_s=0.2, max_delivery_count=1)
    queue = Queue("upload.prod")
    sent = Message(b"\x00body", "m1", {"schema": "v1"})
    async with asyncio.timeout(10):
        await bus.publish(queue, [sent])
        await bus.receive(queue, max_messages=1, max_wait_s=1.0)
        assert await bus.receive(queue, max_messages=1, max_wait_s=0.6) == []
        [letter] = await bus.dead_letters(queue)
    assert (letter.body, letter.message_id, dict(letter.properties)) == (
        b"\x00body",
        "m1",
        {"schema": "v1"},
    )
    assert letter.reason == MAX_DELIVERY_REASON
    assert letter.delivery_count == 1
    assert "1 times" in letter.description


async def test_replay_skips_letters_already_replayed(redis_client: Redis) -> None:
    bus = RedisStreamsBus(redis_client, consumer="a")
    queue = Queue("upload.prod")
    async with asyncio.timeout(10):
        got = await take_m1(bus, queue)
        await bus.dead_letter(queue, got, reason="r", description="d")
        letters = await bus.dead_letters(queue)
        assert await bus.replay(queue, letters) == 1
        assert await bus.replay(queue, letters) == 0
        assert len(await bus.receive(queue, max_messages=10, max_wait_s=0.2)) == 1


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


# ------------------------------------------------------------------------------------------
# Failures and validation


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


async def test_foreign_lock_token_is_a_programming_error(redis_client: Redis) -> None:
    bus = RedisStreamsBus(redis_client, consumer="a")
    queue = Queue("upload.prod")
    async with asyncio.timeout(5):
        got = await take_m1(bus, queue)
    forged = Delivery(
        got.body, got.message_id, got.properties, 1, got.enqueued_at, lock_token="not-a-token"
    )
    with pytest.raises(ValueError, match="lock token"):
        await bus.complete(queue, [forged])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
