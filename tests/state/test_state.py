"""The Redis state adapter against a real redis-server (the session ``redis_server``).

Every behaviour the services build on is asserted here: lease exclusivity, a checkpoint that
never moves backwards, the claim rules (plain, redelivery, supersede), commit clearing only the
claims it matches, seen keys expiring at ``valid_until``, a rate budget that never grants more
than its limit in any window across replicas, and the one-round-trip-per-batch cost.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
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
    CLAIM_RECEIPT_TTL_S,
    CircuitState,
    DestinationState,
    compact_id,
)
from shared.adapters.feed_state import Checkpoint, FeedState, FetcherLease
from shared.adapters.rate_budget import RateBudget
from shared.adapters.redis_connect import connect
from shared.adapters.state_redis import destination_prefix, translated
from shared.core.errors import FatalError, StateRefused, StateUnavailable, TransientError
from shared.core.fingerprint import SeenEntry
from shared.core.stix import stix_id
from tests.state.lost_replies import LostReplies

FP_A = "a" * 32
FP_B = "b" * 32
FP_C = "c" * 32


@pytest.fixture
async def other_client(redis_server: LocalRedis) -> AsyncIterator[Redis]:
    """A second connection pool, standing in for another replica on another host."""
    client: Redis = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def dest(redis_client: Redis) -> DestinationState:
    return DestinationState(redis_client, "acme")


def ids(count: int, start: int = 0) -> list[str]:
    return [stix_id(f"ipv4--{n}", None) for n in range(start, start + count)]


def server_now_close_to_ours() -> datetime:
    """The tests' ``now``; the server runs on this host, so its clock is ours."""
    return datetime.now(UTC)


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


# --- seen, claims, commit --------------------------------------------------------------------


async def test_seen_reads_entries_and_garbage_as_not_seen(dest: DestinationState) -> None:
    now = server_now_close_to_ours()
    entry = SeenEntry(FP_A, (now + timedelta(days=7)).replace(microsecond=0))
    a, b, c = ids(3)
    await dest.commit([(a, entry)], now=now)
    await dest._client.set(dest.seen_key(b), b"garbage")

    assert await dest.seen([a, b, c]) == [entry, None, None]
    assert await dest.seen([]) == []


async def test_plain_claim_is_exclusive_per_fingerprint(
    dest: DestinationState, other_client: Redis
) -> None:
    replica = DestinationState(other_client, "acme")
    a, b = ids(2)

    assert await dest.claim([(a, FP_A), (b, FP_A)], ttl_s=60) == [True, True]
    assert await replica.claim([(a, FP_A), (b, FP_A)], ttl_s=60) == [False, False]
    assert await dest.claims([a, b]) == [FP_A, FP_A]
    assert 59_000 < await dest._client.pttl(dest.inflight_key(a)) <= 60_000


async def test_redelivered_message_with_same_fingerprint_claims_again(
    dest: DestinationState,
) -> None:
    """A raw message redelivered after its forward failed must be forwarded again."""
    (a,) = ids(1)
    assert await dest.claim([(a, FP_A)], ttl_s=5) == [True]

    assert await dest.claim([(a, FP_A)], ttl_s=60, redelivery=True) == [True]
    assert await dest._client.pttl(dest.inflight_key(a)) > 5_000, "the TTL restarts"
    assert await dest.claims([a]) == [FP_A]


async def test_newer_fingerprint_supersedes_queued_claim(dest: DestinationState) -> None:
    a, b = ids(2)
    await dest.claim([(a, FP_A), (b, FP_A)], ttl_s=60)

    assert await dest.claim([(a, FP_B)], ttl_s=60) == [True]

    # The uploader holding the FP_A message sees it is superseded.
    assert await dest.claims([a, b]) == [FP_B, FP_A]


async def test_a_redelivery_never_pushes_another_version_aside(dest: DestinationState) -> None:
    """A redelivered raw message may be older than the version that claimed since."""
    a, b = ids(2)
    await dest.claim([(a, FP_B)], ttl_s=60)

    assert await dest.claim([(a, FP_A), (b, FP_A)], ttl_s=60, redelivery=True) == [False, True]
    assert await dest.claims([a, b]) == [FP_B, FP_A]


async def test_claim_applies_a_batch_in_order_and_overwrites_foreign_values(
    dest: DestinationState,
) -> None:
    a, b = ids(2)
    await dest._client.hset(dest.inflight_key(b), mapping={"not": "ours"})

    assert await dest.claim([(a, FP_A), (a, FP_A), (a, FP_B), (b, FP_C)], ttl_s=60) == [
        True,
        False,
        True,
        True,
    ]
    assert await dest.claims([a, b]) == [FP_B, FP_C]


@pytest.mark.parametrize("redelivery", [False, True])
async def test_a_claim_resent_after_its_reply_was_lost_answers_as_its_first_run(
    redis_server: LocalRedis, dest: DestinationState, redelivery: bool
) -> None:
    """The script ran and took the claims, then the reply was lost (Redis killed before it
    was sent, a dropped connection) and the client sent the call again. The resend must not
    judge afresh: a first delivery would find its own claims "already queued" and drop its
    indicators, with nothing queued. Claims another call holds stay refused all the same."""
    a, b, c = ids(3)
    await dest.claim([(c, FP_C)], ttl_s=60)  # another message's, queued
    async with LostReplies(redis_server.port) as proxy:
        client = connect(proxy.url, retry=Retry(NoBackoff(), 3))
        try:
            state = DestinationState(client, "acme")
            await state.claim([(b, FP_B)], ttl_s=60)  # loads the script: no NOSCRIPT below
            proxy.lose_reply_to(b":inflight:")

            granted = await state.claim(
                [(a, FP_A), (b, FP_A), (c, FP_C)], ttl_s=60, redelivery=redelivery
            )
        finally:
            await client.aclose()
        assert proxy.lost == 1, "the first run's reply was lost, the call sent again"

    assert granted == [True, not redelivery, redelivery]
    assert await dest.claims([a, b, c]) == [FP_A, FP_A if not redelivery else FP_B, FP_C]
    receipts = [key async for key in dest._client.scan_iter(dest.claim_receipt_key("*"))]
    assert len(receipts) == 3, "one per call (the resend read its own), each short-lived"
    for key in receipts:
        assert 0 < await dest._client.pttl(key) <= CLAIM_RECEIPT_TTL_S * 1000


async def test_release_only_deletes_the_fingerprint_it_names(dest: DestinationState) -> None:
    a, b, c = ids(3)
    await dest.claim([(a, FP_A), (b, FP_B)], ttl_s=60)

    assert await dest.release([(a, FP_A), (b, FP_A), (c, FP_A)]) == [True, False, False]
    assert await dest.claims([a, b, c]) == [None, FP_B, None]
    assert await dest.release([]) == []


async def test_commit_writes_seen_and_clears_only_matching_claims(
    dest: DestinationState,
) -> None:
    now = server_now_close_to_ours()
    a, b, c = ids(3)
    await dest.claim([(a, FP_A), (b, FP_B), (c, FP_C)], ttl_s=60)
    # While ``b``'s FP_A upload was in flight, a newer version (FP_B) was queued.
    until = now + timedelta(days=7)
    entries = [(a, SeenEntry(FP_A, until)), (b, SeenEntry(FP_A, until))]

    assert await dest.commit(entries, now=now) == 2

    assert await dest.claims([a, b, c]) == [None, FP_B, FP_C]
    seen = await dest.seen([a, b, c])
    assert [entry.fingerprint if entry else None for entry in seen] == [FP_A, FP_A, None]


async def test_seen_expires_at_valid_until(dest: DestinationState) -> None:
    now = server_now_close_to_ours()
    (a,) = ids(1)
    until = now + timedelta(hours=3)

    await dest.commit([(a, SeenEntry(FP_A, until))], now=now)

    expected_ms = (until - datetime.now(UTC)) / timedelta(milliseconds=1)
    pttl = await dest._client.pttl(dest.seen_key(a))
    assert abs(pttl - expected_ms) < 2_000


async def test_commit_does_not_store_what_already_expired(dest: DestinationState) -> None:
    now = server_now_close_to_ours()
    a, b = ids(2)
    await dest.commit([(a, SeenEntry(FP_A, now + timedelta(days=1)))], now=now)
    await dest.claim([(a, FP_B), (b, FP_B)], ttl_s=60)

    past = now - timedelta(seconds=1)
    stored = await dest.commit([(a, SeenEntry(FP_B, past)), (b, SeenEntry(FP_B, now))], now=now)

    assert stored == 0
    assert await dest.seen([a, b]) == [None, None], "the stale entry is gone too"
    assert await dest.claims([a, b]) == [None, None], "the claims are still settled"


async def test_forget_drops_seen_entries(dest: DestinationState) -> None:
    now = server_now_close_to_ours()
    a, b = ids(2)
    await dest.commit([(a, SeenEntry(FP_A, now + timedelta(days=1)))], now=now)

    assert await dest.forget([a, b]) == 1
    assert await dest.seen([a]) == [None]
    assert await dest.forget([]) == 0


async def test_destination_counters_are_per_destination(redis_client: Redis) -> None:
    acme = DestinationState(redis_client, "acme")
    other = DestinationState(redis_client, "other")

    await acme.count({"forwarded": 10, "dropped_low_confidence": 4})
    await acme.count({"forwarded": 5, "uploaded": 0})
    await other.count({"uploaded": 1})

    assert await acme.counters() == {"forwarded": 15, "dropped_low_confidence": 4}
    assert await other.counters() == {"uploaded": 1}


async def test_circuit_is_shared_and_remembers_since(
    dest: DestinationState, other_client: Redis
) -> None:
    replica = DestinationState(other_client, "acme")
    assert await replica.circuit() == (CircuitState.CLOSED, "", None)

    assert await dest.set_circuit(CircuitState.OPEN, "403 from Sentinel")
    state, reason, since = await replica.circuit()
    assert (state, reason) == (CircuitState.OPEN, "403 from Sentinel")
    assert since is not None
    assert abs(since - datetime.now(UTC)) < timedelta(seconds=5)

    assert not await replica.set_circuit(CircuitState.OPEN, "probe failed")
    assert await dest.circuit() == (CircuitState.OPEN, "probe failed", since)

    await asyncio.sleep(0.01)
    assert await replica.set_circuit(CircuitState.HALF_OPEN)
    state, reason, moved = await dest.circuit()
    assert (state, reason) == (CircuitState.HALF_OPEN, "")
    assert moved is not None
    assert moved > since


async def test_unreadable_circuit_reads_closed(dest: DestinationState) -> None:
    await dest._client.hset(dest.circuit_key, mapping={"state": "ajar", "since": "x"})
    assert await dest.circuit() == (CircuitState.CLOSED, "", None)


async def test_works_with_decoded_responses(redis_server: LocalRedis) -> None:
    client: Redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.flushall()
        state = DestinationState(client, "acme")
        now = server_now_close_to_ours()
        entry = SeenEntry(FP_A, (now + timedelta(days=1)).replace(microsecond=0))
        (a,) = ids(1)
        await state.claim([(a, FP_B)], ttl_s=60)
        assert await state.claims([a]) == [FP_B]
        await state.commit([(a, entry)], now=now)
        assert await state.seen([a]) == [entry]
        await state.set_circuit(CircuitState.OPEN, "x")
        assert (await state.circuit())[:2] == (CircuitState.OPEN, "x")
        feed = FeedState(client)
        await feed.advance(now, "r")
        assert (await feed.checkpoint()) is not None
    finally:
        await client.aclose()


@pytest.mark.parametrize("name", ["", "Acme", "a{b}", "a:b", "-acme", "a" * 41])
def test_destination_names_that_could_break_the_hash_tag_are_refused(
    redis_client: Redis, name: str
) -> None:
    with pytest.raises(ValueError, match="destination"):
        DestinationState(redis_client, name)
    with pytest.raises(ValueError, match="destination"):
        RateBudget(redis_client, name)


# --- rate budget -----------------------------------------------------------------------------


async def test_budget_never_grants_more_than_limit_in_any_window(
    redis_client: Redis, other_client: Redis
) -> None:
    """20 tasks on two clients (two "replicas") want 25 requests under 10 per second.

    Grant times are taken by the client when ``acquire`` returns, which is after the server
    granted it: that is when the request would leave, so it is what Sentinel's window would
    count. The margin (0.25 s) covers the delay between the server's grant and our reading of
    it; no 1-second window of client-side grant times may hold more than 10.
    """
    limit, window_s, margin_s, wanted = 10, 1.0, 0.25, 25
    budgets = [
        RateBudget(client, "acme", limit=limit, window_s=window_s, margin_s=margin_s)
        for client in (redis_client, other_client)
    ]
    granted: list[float] = []

    async def replica(budget: RateBudget) -> None:
        while len(granted) < wanted:
            wait = await budget.acquire()
            if wait == 0.0:
                granted.append(time.monotonic())
            else:
                assert 0.0 < wait <= window_s + margin_s
                await asyncio.sleep(wait)

    await asyncio.gather(*(replica(budgets[n % 2]) for n in range(20)))

    granted.sort()
    assert len(granted) >= wanted
    for i, start in enumerate(granted):
        in_window = sum(1 for t in granted[i:] if t - start < window_s)
        assert in_window <= limit, f"{in_window} grants within {window_s}s from grant {i}"


async def test_budget_wait_is_until_the_oldest_leaves(redis_client: Redis) -> None:
    budget = RateBudget(redis_client, "acme", limit=2, window_s=0.3, margin_s=0.0)

    started = time.monotonic()
    assert await budget.acquire() == 0.0
    await asyncio.sleep(0.1)
    assert await budget.acquire() == 0.0
    wait = await budget.acquire()
    elapsed = time.monotonic() - started

    # The first grant happened after ``started`` and at least 0.1 s before the refusal.
    assert 0.3 - elapsed - 0.01 <= wait <= 0.2
    assert await budget.in_window() == 2, "a refused request is not recorded"

    await asyncio.sleep(wait)
    assert await budget.acquire() == 0.0, "the oldest grant has left the window"
    assert await budget.in_window() == 2
    assert await budget.acquire() > 0.0


async def test_pause_is_shared_and_never_shortened(
    redis_client: Redis, other_client: Redis
) -> None:
    first = RateBudget(redis_client, "acme")
    second = RateBudget(other_client, "acme")
    assert await first.paused_for() == 0.0

    assert await first.pause(5.0) == 5.0
    assert 4.5 < await second.paused_for() <= 5.0
    assert 4.5 < await second.acquire() <= 5.0, "every replica waits out the 429"

    assert 4.5 < await second.pause(1.0) <= 5.0
    assert 4.5 < await first.paused_for() <= 5.0

    assert await second.pause(10.0) == 10.0
    assert 9.5 < await first.paused_for() <= 10.0
    assert await first.in_window() == 0, "nothing was granted during the pause"


async def test_budget_grants_again_after_the_pause(redis_client: Redis) -> None:
    budget = RateBudget(redis_client, "acme")
    await budget.pause(0.05)
    assert await budget.acquire() > 0.0

    await asyncio.sleep(0.07)

    assert await budget.acquire() == 0.0
    assert await budget.paused_for() == 0.0


def test_budget_refuses_bad_arguments(redis_client: Redis) -> None:
    with pytest.raises(ValueError, match="limit"):
        RateBudget(redis_client, "acme", limit=0)
    with pytest.raises(ValueError, match="window_s"):
        RateBudget(redis_client, "acme", window_s=0)
    with pytest.raises(ValueError, match="margin_s"):
        RateBudget(redis_client, "acme", margin_s=-1)


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


def test_seen_keys_use_the_compact_id() -> None:
    (a,) = ids(1)
    compact = compact_id(a)
    assert len(compact) == 16
    assert "indicator" not in compact
    raw = uuid.UUID(a[len("indicator--") :]).bytes
    assert base64.urlsafe_b64decode(compact) == raw[:6] + raw[7:8] + raw[9:14]
    assert len({compact_id(i) for i in ids(1000)}) == 1000
    for other in ("indicator--1", "indicator--045A6B10-A73F-51AC-8C22-538654BBA368", "x"):
        assert compact_id(other) == other, "ids stix_id never makes are kept as they are"
    key = DestinationState(Redis(), "demo").seen_key(a)  # no connection is opened
    assert key == f"m2s:{{demo}}:s:{compact}"
    assert len(key) <= 30, "Redis keeps it in 32 bytes (1-byte header, trailing NUL)"


@pytest.mark.parametrize(
    ("window_s", "span_s"), [(1.0, 1.1), (3.0, 3.3), (30.0, 31.0), (60.0, 61.0)]
)
def test_the_default_margin_is_a_tenth_of_the_window_at_most_a_second(
    redis_client: Redis, window_s: float, span_s: float
) -> None:
    budget = RateBudget(redis_client, "acme", limit=100, window_s=window_s)
    assert budget.span_us == round(span_s * 1_000_000)
