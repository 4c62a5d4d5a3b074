"""What the filter forwards, drops or dead-letters and why (every drop reason; the in-flight,
unchanged, changed and refresh verdicts; hashes; deduplication off; bad bodies), and that a record
is forwarded once and never lost when a filter dies after its claim, a claim's reply is lost, the
forward fails, or its lock passes to another filter."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.cli.redis_server import LocalRedis
from services.filter.config import FilterConfig
from services.filter.worker import INVALID_RECORD, FilterWorker
from shared.adapters.destination_state import DestinationState
from shared.adapters.redis_connect import connect
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Message, Target
from shared.core.errors import BusUnavailable
from shared.core.filters import DropReason, FilterPolicy, HashSelection
from shared.core.fingerprint import ForwardReason, fingerprint
from shared.core.indicator import HashType
from shared.core.stix import stix_id
from tests.services.filter_rig import (
    DEST,
    QUEUE,
    SOURCE,
    STIX,
    Rig,
    again,
    assert_settled,
    commit,
    expected,
    of_type,
    passing,
    publish,
    sync,
    take,
    uploads,
)
from tests.state.lost_replies import LostReplies

IPV4_DAYS = STIX.ipv4_expiration


async def test_every_drop_reason_is_counted_and_accepted_ones_forwarded_once(rig: Rig) -> None:
    # A list no generated record is on, so only the record flagged below meets it.
    policy = FilterPolicy(
        include_url=False,
        include_uncategorized=False,
        hash_selection=HashSelection.SHA256,
        exclude_warninglists=frozenset({"test-only-list"}),
    )
    ipv4, md5 = passing(of_type("ipv4")), passing(of_type("md5"))
    osint = passing(of_type("ipv4", 2))
    for source in osint["sources"]:
        source["osint"] = True
    uncategorized = passing(of_type("fqdn"))
    uncategorized["category"] = []
    for source in uncategorized["sources"]:
        source["category"] = []
    no_sha256 = passing(of_type("md5", 1))
    no_sha256["associated_hashes"] = [h for h in md5["associated_hashes"] if h["type"] == "md5"]
    records = [
        passing(of_type("url")),
        {**passing(of_type("ipv4", 1)), "mscore": 10},
        {**passing(of_type("fqdn", 1)), "threat_rating": {"threat_score": 10}},
        osint,
        uncategorized,
        no_sha256,
        {**passing(of_type("fqdn", 2)), "misp": {"test-only-list": True, "alexa": False}},
        {k: v for k, v in passing(of_type("fqdn", 3)).items() if k != "misp"},  # no flags
        ipv4,
        md5,
    ]
    outcome = await sync(rig, rig.worker(filter_policy=policy), *records)

    drops = {f"dropped_{reason}": 1 for reason in DropReason}
    want = {"received": 10, "forwarded": 2, "forwarded_new": 2, **drops}
    assert dict(outcome.counts) == want
    assert await rig.state.counters() == want
    forwarded = await uploads(rig.bus)
    assert {(r.stix_id, r.fingerprint, r.reason) for r in forwarded} == {
        (*expected(ipv4, None, policy), ForwardReason.NEW),
        (*expected(md5, HashType.SHA256, policy), ForwardReason.NEW),
    }
    assert {(r.indicator_id, r.indicator_type) for r in forwarded} == {
        (ipv4["id"], "ipv4"),
        (md5["id"], "md5"),
    }
    # The object carried is the one fingerprinted: the uploader only stamps it.
    assert all(fingerprint(r.draft.body) == r.fingerprint for r in forwarded)
    assert await rig.state.claims([r.stix_id for r in forwarded]) == [
        r.fingerprint for r in forwarded
    ]
    await assert_settled(rig)


async def test_same_version_is_in_flight_while_queued_then_unchanged_once_uploaded(
    rig: Rig,
) -> None:
    worker = rig.worker()
    record = passing(of_type("ipv4"))
    assert (await sync(rig, worker, record))["forwarded_new"] == 1
    (request,) = await uploads(rig.bus)

    second = await sync(rig, worker, again(record))
    assert second["dropped_in_flight"] == 1
    assert second["forwarded"] == 0
    assert await uploads(rig.bus) == []

    await commit(rig, [request], rig.clock.now + IPV4_DAYS)
    third = await sync(rig, worker, again(record, 2))
    assert third["dropped_unchanged"] == 1
    assert third["forwarded"] == 0
    assert await uploads(rig.bus) == []
    counters = await rig.state.counters()
    assert (counters["dropped_in_flight"], counters["dropped_unchanged"]) == (1, 1)
    await assert_settled(rig)


async def test_a_changed_record_is_forwarded_as_changed(rig: Rig) -> None:
    worker = rig.worker()
    record = passing(of_type("fqdn"))
    await sync(rig, worker, record)
    (first,) = await uploads(rig.bus)
    await commit(rig, [first], rig.clock.now + IPV4_DAYS)

    changed = {**again(record), "mscore": 99}
    assert (await sync(rig, worker, changed))["forwarded_changed"] == 1
    (second,) = await uploads(rig.bus)
    assert second.stix_id == first.stix_id
    assert (second.fingerprint, second.reason) == (expected(changed)[1], ForwardReason.CHANGED)
    assert second.fingerprint != first.fingerprint


async def test_refresh_rule_forwards_only_near_the_end_of_validity(rig: Rig) -> None:
    """Ratio 0.5 of 7 days: re-upload once an upload now would add at least 3.5 days."""
    worker = rig.worker(rig.undeduplicated_bus(), refresh_ratio=0.5)
    record = passing(of_type("ipv4"))
    await sync(rig, worker, record)
    (request,) = await uploads(rig.bus)

    await commit(rig, [request], rig.clock.now + timedelta(days=6))  # uploaded a day ago
    assert (await sync(rig, worker, again(record)))["dropped_unchanged"] == 1
    assert await uploads(rig.bus) == []

    await commit(rig, [request], rig.clock.now + timedelta(days=3))  # four days ago
    assert (await sync(rig, worker, again(record, 2)))["forwarded_refresh"] == 1
    (refresh,) = await uploads(rig.bus)
    assert (refresh.stix_id, refresh.fingerprint) == (request.stix_id, request.fingerprint)
    assert refresh.reason is ForwardReason.REFRESH


async def test_hash_type_all_forwards_one_indicator_per_hash(rig: Rig) -> None:
    worker = rig.worker(filter_policy=FilterPolicy(hash_selection=HashSelection.ALL))
    record = passing(of_type("md5"))
    assert {h["type"] for h in record["associated_hashes"]} == {"md5", "sha1", "sha256"}

    outcome = await sync(rig, worker, record)
    assert (outcome["received"], outcome["forwarded"]) == (1, 3)
    forwarded = await uploads(rig.bus)
    assert {r.stix_id for r in forwarded} == {
        stix_id(record["id"], hash_type) for hash_type in HashType
    }
    await assert_settled(rig)

    # Only the sha1 upload was committed: the other two are still queued, so the raw message
    # of the next sync is settled with one unchanged and two in flight.
    await commit(
        rig,
        [r for r in forwarded if r.stix_id == stix_id(record["id"], HashType.SHA1)],
        rig.clock.now + STIX.hash_expiration,
    )
    outcome = await sync(rig, worker, again(record))
    assert (outcome["dropped_unchanged"], outcome["dropped_in_flight"]) == (1, 2)
    await assert_settled(rig)


async def test_deduplication_disabled_forwards_everything(rig: Rig) -> None:
    worker = rig.worker(rig.undeduplicated_bus(), deduplication=False)
    records = [passing(of_type("ipv4", n)) for n in range(3)]
    assert (await sync(rig, worker, *records))["forwarded_new"] == 3
    first = await uploads(rig.bus)
    await commit(rig, first, rig.clock.now + IPV4_DAYS)

    outcome = await sync(rig, worker, *(again(r) for r in records))
    assert (outcome["forwarded_new"], outcome["dropped_unchanged"]) == (3, 0)
    assert len(await uploads(rig.bus)) == 3


async def test_bad_bodies_are_dead_lettered_with_their_reason_and_the_batch_goes_on(
    rig: Rig,
) -> None:
    good = passing(of_type("url"))
    secret_payload = "x" * 5000
    outcome = await sync(
        rig,
        rig.worker(),
        Message(body=b'{"id": "ipv4--1", ' + secret_payload.encode(), message_id="broken-1"),
        [1, 2, 3],
        {"id": "ipv4--2", "type": "ipv4"},
        {"id": "sha512--3", "type": "sha512", "value": "ab"},
        good,
    )
    rejected = {
        "rejected_invalid_json": 1,
        "rejected_not_an_object": 1,
        "rejected_missing_field": 1,
        "rejected_unsupported_type": 1,
    }
    assert dict(outcome.counts) == {"received": 5, "forwarded": 1, "forwarded_new": 1, **rejected}
    assert [r.indicator_id for r in await uploads(rig.bus)] == [good["id"]]

    dead = await rig.bus.dead_letters(SOURCE)
    assert {d.reason for d in dead} == {INVALID_RECORD}
    assert sorted(d.description.split(":")[0] for d in dead) == sorted(
        name.removeprefix("rejected_") for name in rejected
    )
    assert all(len(d.description) < 300 and secret_payload not in d.description for d in dead)
    await assert_settled(rig)


async def test_a_redelivered_message_takes_over_its_claim_and_is_forwarded(rig: Rig) -> None:
    """A filter claimed this version and died before publishing; the raw message comes back
    (delivery count 2) and must be forwarded, not dropped as "in flight" and lost. A fresh
    message of the same version (a second sync) meanwhile is dropped as in flight."""
    worker = rig.worker()
    record = passing(of_type("ipv4"))
    sid, fp = expected(record)
    await publish(rig.bus, record)
    (first,) = await take(rig.bus, SOURCE, 1)
    assert await rig.state.claim([(sid, fp)], ttl_s=60) == [True]
    await rig.bus.abandon(SOURCE, [first])

    (redelivered,) = await take(rig.bus, SOURCE, 1)
    assert redelivered.delivery_count == 2
    assert (await worker.handle([redelivered]))["forwarded_new"] == 1
    assert [(r.stix_id, r.fingerprint) for r in await uploads(rig.bus)] == [(sid, fp)]

    assert (await sync(rig, worker, again(record)))["dropped_in_flight"] == 1
    await assert_settled(rig)


async def test_a_claim_whose_reply_was_lost_still_forwards_its_batch(
    rig: Rig, redis_server: LocalRedis
) -> None:
    """Redis ran the batch's claim script, then the reply was lost (Redis killed before it was
    sent, a dropped connection) and the client sent the script again. The batch must be
    forwarded as the claims were granted: judged afresh, these first deliveries found their
    own claims "in flight", were completed with nothing queued, and their indicators lost."""
    records = [passing(of_type("ipv4", n)) for n in range(3)]
    await publish(rig.bus, *records)
    batch = await take(rig.bus, SOURCE, 3)
    async with LostReplies(redis_server.port) as proxy:
        client = connect(proxy.url, retry=Retry(NoBackoff(), 3))
        try:
            state = DestinationState(client, DEST)
            await state.claim([("warm-up", "0")], ttl_s=1)  # loads the script: no NOSCRIPT
            proxy.lose_reply_to(b":inflight:")
            worker = FilterWorker(
                FilterConfig(DEST, stix_policy=STIX),
                bus=rig.bus,
                state=state,
                clock=rig.clock,
                rng=random.Random(1),
            )
            outcome = await worker.handle(batch)
        finally:
            await client.aclose()
        assert proxy.lost == 1, "the claim ran, its reply was lost and the claim sent again"

    assert (outcome["forwarded_new"], outcome["dropped_in_flight"]) == (3, 0)
    queued = sorted((r.stix_id, r.fingerprint) for r in await uploads(rig.bus))
    assert queued == sorted(expected(r) for r in records)
    await assert_settled(rig)


class PublishFails(RedisStreamsBus):
    """The real bus whose publishes to the upload queue fail ``failures`` times.

    A wrapper because no simulator fault reaches the bus, and stopping Redis would take the
    seen/claim state down with it: the case here is the bus alone failing while the state
    works (in production, Service Bus down while Azure Cache for Redis is fine)."""

    failures = 0

    async def publish(self, target: Target, messages: Sequence[Message]) -> None:
        if target == QUEUE and self.failures > 0:
            self.failures -= 1
            raise BusUnavailable("publish failed: injected")
        await super().publish(target, messages)


async def test_a_failed_forward_releases_claims_and_gives_the_messages_back(
    rig: Rig, redis_client: Redis
) -> None:
    bus = PublishFails(redis_client, consumer="filter-1", lock_duration_s=5.0)
    bus.failures = 1
    worker = rig.worker(bus)
    accepted = [passing(of_type("ipv4", n)) for n in range(3)]
    dropped = {**passing(of_type("fqdn")), "mscore": 1}
    await publish(bus, *accepted, dropped)
    batch = await take(bus, SOURCE, 4)

    with pytest.raises(BusUnavailable):
        await worker.handle(batch)
    assert await uploads(rig.bus) == []
    ids = [expected(r)[0] for r in accepted]
    assert await rig.state.claims(ids) == [None, None, None]
    assert await rig.state.counters() == {
        "received": 4,
        "abandoned": 3,
        "dropped_low_confidence": 1,
    }

    # The abandoned messages come back at once (not after their lock), the dropped one is done.
    again_batch = await take(bus, SOURCE, 3)
    assert {d.delivery_count for d in again_batch} == {2}
    assert (await worker.handle(again_batch))["forwarded_new"] == 3
    assert sorted(r.stix_id for r in await uploads(rig.bus)) == sorted(ids)
    await assert_settled(rig)


async def test_a_lost_lock_is_counted_not_fatal(rig: Rig, redis_client: Redis) -> None:
    """Our lock expired and another filter took the message over before we completed it."""
    ours = RedisStreamsBus(redis_client, consumer="filter-1", lock_duration_s=0.2)
    theirs = RedisStreamsBus(redis_client, consumer="filter-2", lock_duration_s=0.2)
    record = passing(of_type("ipv4"))
    await publish(ours, record)
    batch = await take(ours, SOURCE, 1)
    taken = await take(theirs, SOURCE, 1)
    assert taken[0].delivery_count == 2

    outcome = await rig.worker(ours).handle(batch)
    assert (outcome["lock_lost"], outcome["forwarded"]) == (1, 1)
    assert (await rig.state.counters())["lock_lost"] == 1
