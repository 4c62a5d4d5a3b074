"""A destination's state against a real redis-server: the claim rules (plain, redelivery,
supersede), commit clearing only the claims it matches, seen keys expiring at ``valid_until``,
and a circuit every replica shares."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.cli.redis_server import LocalRedis
from shared.adapters.destination_state import (
    CLAIM_RECEIPT_TTL_S,
    REVOCATION_MEMORY,
    CircuitState,
    DestinationState,
    compact_id,
)
from shared.adapters.feed_state import FeedState
from shared.adapters.rate_budget import RateBudget
from shared.adapters.redis_connect import connect
from shared.core.fingerprint import SeenEntry
from tests.state.lost_replies import LostReplies
from tests.state.samples import FP_A, FP_B, FP_C, ids, server_now_close_to_ours


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


async def test_a_revoked_or_later_generation_entry_outlives_its_valid_until(
    dest: DestinationState,
) -> None:
    """Forgetting a revoked lineage at its ``valid_until`` would publish it again under the
    revoked id (which Sentinel refuses to un-revoke), so its entry is kept far longer."""
    now = server_now_close_to_ours()
    a, b, c = ids(3)
    until = now + timedelta(hours=3)
    await dest.commit(
        [
            (a, SeenEntry(FP_A, until, revoked=True)),
            (b, SeenEntry(FP_A, until, generation=2)),
            (c, SeenEntry(FP_A, now - timedelta(seconds=1), revoked=True, generation=1)),
        ],
        now=now,
    )
    expected_ms = (now + REVOCATION_MEMORY - datetime.now(UTC)) / timedelta(milliseconds=1)
    for stix_id in (a, b, c):
        pttl = await dest._client.pttl(dest.seen_key(stix_id))
        assert abs(pttl - expected_ms) < 2_000
    seen = await dest.seen([a, b, c])
    assert [(e.revoked, e.generation) if e else None for e in seen] == [
        (True, 0),
        (False, 2),
        (True, 1),
    ]


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
