"""Locks and dead letters on the Redis Streams bus beyond the shared contract: it keeps them in
the consumers' pending lists, where a stale or forged delivery must not settle what it no longer
holds, an abandoned entry far down the list must still come back at once, and a letter must
keep what was sent and be replayed only once."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import MAX_DELIVERY_REASON, Delivery, Message, Queue
from shared.core.errors import LockLost
from tests.bus.contract import message
from tests.bus.redis_streams_rig import receive_all

pytestmark = pytest.mark.timeout(30)


async def take_m1(bus: RedisStreamsBus, queue: Queue) -> Delivery:
    """Publish m1 to ``queue`` and receive it: the delivery a test then settles, dead-letters
    or forges."""
    await bus.publish(queue, [message(1)])
    [got] = await bus.receive(queue, max_messages=1, max_wait_s=1.0)
    return got


# ------------------------------------------------------------------------------------------
# Locks beyond the contract


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
