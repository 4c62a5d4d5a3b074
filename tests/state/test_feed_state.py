"""The fetcher's state against a real redis-server: one fetcher holds the lease at a time, the
checkpoint never moves backwards, and the feed's memory survives a new client."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from shared.adapters.feed_state import Checkpoint, FeedState, FetcherLease

# --- lease -----------------------------------------------------------------------------------


async def test_lease_is_exclusive_between_owners(redis_client: Redis, other_client: Redis) -> None:
    first = FetcherLease(redis_client, owner="pod-a")
    second = FetcherLease(other_client, owner="pod-b")

    assert await first.acquire()
    assert not await second.acquire()
    assert await first.acquire(), "the holder acquiring again still holds it"
    assert await first.holder() == "pod-a"
    assert await second.holder() == "pod-a"


async def test_only_the_holder_renews_and_releases(
    redis_client: Redis, other_client: Redis
) -> None:
    first = FetcherLease(redis_client, owner="pod-a", ttl_s=30.0)
    second = FetcherLease(other_client, owner="pod-b", ttl_s=30.0)
    assert await first.acquire()

    assert not await second.renew()
    assert not await second.release()
    assert await second.holder() == "pod-a"

    await redis_client.pexpire(first.key, 1000)
    assert await first.renew()
    assert 29_000 < await redis_client.pttl(first.key) <= 30_000

    assert await first.release()
    assert await first.holder() is None
    assert not await first.renew(), "a released lease is lost, not silently re-taken"
    assert await second.acquire()


async def test_expired_lease_hands_over(redis_client: Redis, other_client: Redis) -> None:
    first = FetcherLease(redis_client, owner="pod-a", ttl_s=0.1)
    second = FetcherLease(other_client, owner="pod-b", ttl_s=0.1)
    assert await first.acquire()

    await asyncio.sleep(0.15)

    assert await second.acquire()
    assert not await first.renew()
    assert await second.holder() == "pod-b"


def test_lease_refuses_bad_arguments(redis_client: Redis) -> None:
    with pytest.raises(ValueError, match="owner"):
        FetcherLease(redis_client, owner="")
    with pytest.raises(ValueError, match="ttl_s"):
        FetcherLease(redis_client, owner="x", ttl_s=0)


# --- feed state ------------------------------------------------------------------------------


async def test_checkpoint_only_moves_forward(redis_client: Redis) -> None:
    feed = FeedState(redis_client)
    t1 = datetime(2026, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
    saved = datetime(2026, 3, 2, tzinfo=UTC)
    assert await feed.checkpoint() is None

    assert await feed.advance(t1, "run-1", now=saved)
    assert not await feed.advance(t1 - timedelta(hours=1), "run-late", now=saved)
    assert not await feed.advance(t1, "run-same", now=saved)

    expected = Checkpoint(t1.replace(microsecond=123_000), saved, "run-1")
    assert await feed.checkpoint() == expected

    t2 = t1 + timedelta(milliseconds=1)
    assert await feed.advance(t2, "run-2", now=saved)
    checkpoint = await feed.checkpoint()
    assert checkpoint is not None
    assert checkpoint.last_updated == t2.replace(microsecond=124_000)
    assert checkpoint.run_id == "run-2"


async def test_checkpoint_survives_a_new_client(redis_server: LocalRedis) -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    writer: Redis = Redis.from_url(redis_server.url)
    await writer.flushall()
    try:
        assert await FeedState(writer).advance(t, "run-1")
    finally:
        await writer.aclose()

    reader: Redis = Redis.from_url(redis_server.url)
    try:
        checkpoint = await FeedState(reader).checkpoint()
    finally:
        await reader.aclose()
    assert checkpoint is not None
    assert checkpoint.last_updated == t
    assert checkpoint.last_updated.tzinfo is UTC
    assert checkpoint.run_id == "run-1"
    # Without ``now`` the saved time is the Redis server's clock (this host's here).
    assert abs(checkpoint.saved_at - datetime.now(UTC)) < timedelta(seconds=5)


async def test_checkpoint_refuses_naive_times_and_ignores_garbage(redis_client: Redis) -> None:
    feed = FeedState(redis_client)
    with pytest.raises(ValueError, match="aware"):
        await feed.advance(datetime(2026, 1, 1), "run-1")

    await redis_client.hset(feed.checkpoint_key, mapping={"last_updated": "soon"})
    assert await feed.checkpoint() is None
    assert await feed.advance(datetime(2026, 1, 1, tzinfo=UTC), "run-1")
    assert await feed.checkpoint() is not None


async def test_last_run_round_trip(redis_client: Redis) -> None:
    feed = FeedState(redis_client)
    assert await feed.last_run() is None

    summary = {"run_id": "r1", "fetched": 1200, "dropped": {"low_confidence": 3}, "ok": True}
    await feed.record_run(summary)
    assert await feed.last_run() == summary

    await redis_client.set(feed.last_run_key, b"[1, 2]")
    assert await feed.last_run() is None
    await redis_client.set(feed.last_run_key, b"{not json")
    assert await feed.last_run() is None


async def test_feed_counters_add_up(redis_client: Redis) -> None:
    feed = FeedState(redis_client)
    assert await feed.counters() == {}

    await feed.count({"fetched": 3, "pages": 1})
    await feed.count({"fetched": 2, "published": 0})
    await feed.count({})

    assert await feed.counters() == {"fetched": 5, "pages": 1}
