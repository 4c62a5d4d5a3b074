"""The Redis Streams bus's footprint in Redis: completed entries are deleted so memory stays
flat, one entity's keys share one hash slot (as Redis Cluster requires), a topic without
subscriptions stores nothing, and a large batch is split into script calls in order."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Queue, Subscription, Topic
from tests.bus.contract import message
from tests.bus.redis_streams_rig import _text, receive_all

pytestmark = pytest.mark.timeout(30)


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
