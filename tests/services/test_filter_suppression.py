"""Suppressions in the filter (issue 14, "suppress now"): a suppressed record is dropped
whatever the filters say and whatever path it takes (the full path, the shortcut, a batch
judged just before the suppression), its live observables are revoked under their ids, and
the suppressions cost one key in the batch's first ``MGET``, not a round trip."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from services.filter.worker import FilterWorker
from shared.adapters.destination_state import BatchView, DestinationState
from shared.adapters.suppressions import Suppression
from shared.contract.messages import raw_message
from shared.core.filters import FilterPolicy, HashSelection
from shared.core.fingerprint import ForwardReason
from shared.core.indicator import HashType
from shared.core.stix import stix_id
from tests.services.filter_rig import (
    SOURCE,
    STIX,
    Rig,
    again,
    assert_settled,
    commit,
    of_type,
    passing,
    publish,
    sync,
    take,
    uploads,
)
from tests.services.test_filter_cost import calls

DAYS = STIX.fqdn_expiration


async def suppress(rig: Rig, record: dict[str, Any]) -> None:
    suppression = Suppression(
        record["id"], record["value"], record["type"], "a test", datetime.now(UTC)
    )
    await rig.state.suppressions.add(suppression)


def reported_now(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as MATI reports it today (a full sync's re-judging drops a stale one)."""
    now = datetime.now(UTC) - timedelta(minutes=5)
    return {**record, "last_updated": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}


async def uploaded(rig: Rig, worker: FilterWorker, record: dict[str, Any]) -> list[Any]:
    """``record`` synced and committed: live in the workspace."""
    await sync(rig, worker, record)
    requests = await uploads(rig.bus)
    await commit(rig, requests, rig.clock.now + STIX.hash_expiration)
    return requests


async def test_a_suppressed_record_is_dropped_and_its_live_object_revoked(rig: Rig) -> None:
    worker = rig.worker()
    record = passing(of_type("fqdn"))
    (live,) = await uploaded(rig, worker, record)
    await suppress(rig, record)

    changed = {**again(record), "mscore": 99}  # still passing, and changed
    outcome = await sync(rig, worker, changed)
    assert outcome["dropped_suppressed"] == 1
    assert (outcome["revoked_suppressed"], outcome["forwarded_revoke"]) == (1, 1)
    assert outcome["forwarded_changed"] == 0
    (revoke,) = await uploads(rig.bus)
    assert revoke.reason is ForwardReason.REVOKE
    assert (revoke.stix_id, revoke.revoked) == (live.stix_id, True)
    await assert_settled(rig)

    # Revoked in the workspace now: reported again, it is dropped with nothing to send.
    await commit(rig, [revoke], rig.clock.now + DAYS)
    outcome = await sync(rig, worker, again(changed))
    assert (outcome["dropped_suppressed"], outcome["forwarded"]) == (1, 0)
    assert await uploads(rig.bus) == []


async def test_a_suppressed_record_never_uploaded_is_only_dropped(rig: Rig) -> None:
    record = passing(of_type("url"))
    await suppress(rig, record)
    outcome = await sync(rig, rig.worker(), record)
    assert (outcome["dropped_suppressed"], outcome["forwarded"]) == (1, 0)
    assert await uploads(rig.bus) == []


async def test_without_the_seen_cache_a_suppressed_record_is_still_dropped(rig: Rig) -> None:
    record = passing(of_type("ipv4"))
    await suppress(rig, record)
    outcome = await sync(rig, rig.worker(deduplication=False), record)
    assert (outcome["dropped_suppressed"], outcome["forwarded"]) == (1, 0)


async def test_every_live_hash_of_a_suppressed_md5_is_revoked(rig: Rig) -> None:
    everything = FilterPolicy(hash_selection=HashSelection.ALL)
    record = passing(of_type("md5"))
    live = await uploaded(rig, rig.worker(filter_policy=everything), record)
    assert len(live) == 3
    await suppress(rig, record)

    md5_only = rig.worker(filter_policy=FilterPolicy(hash_selection=HashSelection.MD5))
    outcome = await sync(rig, md5_only, again(record))
    assert outcome["revoked_suppressed"] == 3
    revoked = await uploads(rig.bus)
    assert {r.stix_id for r in revoked} == {stix_id(record["id"], h) for h in HashType}
    assert all(r.revoked for r in revoked)


async def test_the_shortcut_never_recognises_a_suppressed_record(rig: Rig) -> None:
    """The very same bytes, its entry live and carrying their tag (an upload that was on its
    way when the suppression was added): recognised, it would stay live; it is revoked."""
    bus = rig.undeduplicated_bus()
    worker = rig.worker(bus)
    record = passing(of_type("ipv4"))
    (live,) = await uploaded(rig, worker, record)
    assert (await sync(rig, worker, record, bus=bus))["dropped_unchanged"] == 1  # recognised
    await suppress(rig, record)

    outcome = await sync(rig, worker, record, bus=bus)
    assert outcome["dropped_unchanged"] == 0
    assert (outcome["dropped_suppressed"], outcome["revoked_suppressed"]) == (1, 1)
    (revoke,) = await uploads(rig.bus)
    assert (revoke.stix_id, revoke.revoked) == (live.stix_id, True)


class SuppressedMeanwhile(DestinationState):
    """The real state, with an analyst's ``suppress add`` landing right after the batch's
    first ``MGET``: the batch is judged with the set of a moment ago."""

    def __init__(self, client: Redis, destination: str, suppression: Suppression) -> None:
        super().__init__(client, destination)
        self._suppression = suppression

    async def batch_view(self, stix_ids: Sequence[str]) -> BatchView:
        answer = await super().batch_view(stix_ids)
        await self.suppressions.add(self._suppression)
        return answer


async def test_a_batch_judged_before_the_suppression_does_not_queue_it(rig: Rig) -> None:
    """Its claim would supersede the suppression's revocation: the claim script refuses it."""
    record = passing(of_type("fqdn"))
    suppression = Suppression(record["id"], record["value"], "fqdn", "now", datetime.now(UTC))
    rig.state = SuppressedMeanwhile(rig.redis, rig.state.destination, suppression)
    outcome = await sync(rig, rig.worker(), record)
    assert (outcome["dropped_suppressed"], outcome["forwarded"]) == (1, 0)
    assert outcome["dropped_in_flight"] == 0
    assert await uploads(rig.bus) == []
    assert await rig.state.claims([stix_id(record["id"], None)]) == [None]
    await assert_settled(rig)


async def test_removed_it_comes_back_under_the_next_generation(rig: Rig) -> None:
    """What ``suppress remove`` hands the filter: MATI's record as a full sync's re-judging."""
    worker = rig.worker()
    record = reported_now(passing(of_type("fqdn")))
    (live,) = await uploaded(rig, worker, record)
    await suppress(rig, record)
    await sync(rig, worker, again(record))
    (revoke,) = await uploads(rig.bus)
    await commit(rig, [revoke], rig.clock.now + DAYS)

    await rig.state.suppressions.remove(record["id"])
    await publish(rig.bus, raw_message(again(record), run_id="unsuppress-1", full=True))
    outcome = await worker.handle(await take(rig.bus, SOURCE, 1))
    assert outcome["forwarded_new"] == 1
    (back,) = await uploads(rig.bus)
    assert back.draft.stix_id == stix_id(record["id"], None, 1) != live.stix_id
    assert (back.stix_id, back.generation, back.revoked) == (live.stix_id, 1, False)


async def test_suppressions_cost_no_round_trip_until_they_change(
    rig: Rig, redis_client: Redis
) -> None:
    """The version rides in the first ``MGET``; the set is read (one script) once per change."""
    worker = rig.worker()
    records = [passing(of_type("ipv4", n)) for n in range(5)]
    await suppress(rig, records[0])
    costs = []
    for n, record in enumerate(records[1:]):
        if n == 2:
            await suppress(rig, records[0])  # an update: the version moves
        await publish(rig.bus, record)
        batch = await take(rig.bus, SOURCE, 1)
        before = await calls(redis_client)
        await worker.handle(batch)
        after = await calls(redis_client)
        costs.append({c: after.get(c, 0) - before.get(c, 0) for c in ("mget", "evalsha")})
        await uploads(rig.bus)
    # The first batch pays the one-time script loads; then a batch costs what it always did
    # (test_filter_cost: the MGET; claim, publish, complete, count), and one more script (the
    # set read again) only after the change.
    steady = {"mget": 1, "evalsha": 4}
    assert costs[1:] == [steady, {"mget": 1, "evalsha": 5}, steady]
