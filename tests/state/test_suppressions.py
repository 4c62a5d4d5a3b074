"""A destination's suppressions against a real redis-server: every change moves the version
with it, the set and its version are read together, the filter's ``MGET`` carries the version,
the claim script refuses a suppressed id, and ``claim_over`` takes any claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from shared.adapters.destination_state import Claimed, DestinationState
from shared.adapters.suppressions import Suppression, Suppressions
from shared.core.fingerprint import SeenEntry
from tests.state.samples import FP_A, FP_B, ids, server_now_close_to_ours

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def suppression(mati_id: str = "ipv4--1", reason: str = "our proxy") -> Suppression:
    return Suppression(mati_id, "10.1.2.3", "ipv4", reason, NOW)


async def test_every_change_moves_the_version_and_the_snapshot_agrees(
    dest: DestinationState,
) -> None:
    store = dest.suppressions
    assert (await store.snapshot()).version == 0
    assert await store.add(suppression()) is True
    assert await store.add(suppression("fqdn--2")) is True
    updated = suppression(reason="still our proxy")
    assert await store.add(updated) is False, "an update, not a new one"
    current = await store.snapshot()
    assert current.version == 3
    assert current.by_id == {"ipv4--1": updated, "fqdn--2": suppression("fqdn--2")}
    assert await store.get("ipv4--1") == updated

    assert await store.remove("ipv4--1") is True
    assert await store.remove("ipv4--1") is False
    after = await store.snapshot()
    assert after.version == 4, "a removal that removed nothing moves nothing"
    assert "ipv4--1" not in after
    assert "fqdn--2" in after
    assert await store.get("ipv4--1") is None


async def test_destinations_keep_their_own(redis_client: Redis) -> None:
    acme, other = Suppressions(redis_client, "acme"), Suppressions(redis_client, "other")
    await acme.add(suppression())
    assert (await other.snapshot()).by_id == {}
    assert acme.key.startswith("m2s:{acme}:")
    assert acme.version_key.startswith("m2s:{acme}:")


async def test_an_unreadable_value_still_suppresses_its_id(dest: DestinationState) -> None:
    await dest._client.hset(dest.suppressions.key, "url--3", b"not json")
    current = await dest.suppressions.snapshot()
    assert "url--3" in current
    assert current.by_id["url--3"].reason == "(unreadable)"


async def test_the_seen_mget_carries_the_version(dest: DestinationState) -> None:
    now = server_now_close_to_ours()
    entry = SeenEntry(FP_A, (now + timedelta(days=7)).replace(microsecond=0))
    a, b = ids(2)
    await dest.commit([(a, entry)], now=now)
    assert await dest.seen_with_version([a, b]) == ([entry, None], 0)
    await dest.suppressions.add(suppression())
    assert await dest.seen_with_version([]) == ([], 1)


async def test_the_claim_refuses_a_suppressed_id_and_only_where_asked(
    dest: DestinationState,
) -> None:
    a, b, c = ids(3)
    await dest.suppressions.add(suppression("ipv4--1"))
    answers = await dest.claim_unless_suppressed(
        [(a, FP_A, "ipv4--1"), (b, FP_A, "ipv4--9"), (c, FP_A, "")], ttl_s=60
    )
    assert answers == [Claimed.SUPPRESSED, Claimed.GRANTED, Claimed.GRANTED]
    assert await dest.claims([a, b, c]) == [None, FP_A, FP_A]
    redelivered = await dest.claim_unless_suppressed(
        [(a, FP_A, "ipv4--1")], ttl_s=60, redelivery=True
    )
    assert redelivered == [Claimed.SUPPRESSED]


async def test_claim_over_takes_any_claim(dest: DestinationState) -> None:
    a, b = ids(2)
    assert await dest.claim([(a, FP_A)], ttl_s=60) == [True]
    await dest.claim_over([(a, FP_B), (b, FP_B)], ttl_s=60)
    assert await dest.claims([a, b]) == [FP_B, FP_B]
    await dest.claim_over([(a, FP_B)], ttl_s=60)  # the same again: still ours
    assert await dest.claims([a]) == [FP_B]
    assert 59_000 < await dest._client.pttl(dest.inflight_key(b)) <= 60_000
