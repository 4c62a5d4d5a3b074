"""The priority lane (issue 14): a revocation queued behind a back-fill rides in the very next
request, within the same quota, and every message of a batch that mixes the lane and the queue
is settled on the queue it came from (completed, dead-lettered, given back). An upload that a
revocation overtook while it waited is not sent after it."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from shared.adapters.rate_budget import RateBudget
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Message
from shared.contract.messages import UploadRequest, upload_message
from shared.core.fingerprint import ForwardReason, SeenEntry
from simulators.faults import FaultKind
from simulators.sentinel import STIX_ROUTE
from tests.helpers import wait_for
from tests.services.uploader_rig import (
    DEST,
    LOCK_S,
    QUEUE,
    URGENT,
    Queued,
    World,
    assert_stored_once,
    run_until,
)


async def _revoke(w: World, q: Queued) -> UploadRequest:
    """Queue the revocation of ``q`` on the lane, claimed, as the filter would."""
    draft = q.request.draft.reissued(q.request.draft.stix_id, revoked=True)
    request = UploadRequest(draft, ForwardReason.REVOKE, indicator_type=q.request.indicator_type)
    assert await w.state.claim([(request.stix_id, request.fingerprint)], ttl_s=600) == [True]
    message: Message = upload_message(request, run_id="run-2", source_message_id="again")
    await w.bus.publish(URGENT, [message])
    return request


def _requests(w: World) -> list[list[dict[str, Any]]]:
    """The objects of each upload request Sentinel received, in order."""
    return [orjson.loads(r.body)["stixobjects"] for r in w.sentinel.recorder.of(STIX_ROUTE)]


async def test_a_revocation_goes_out_in_the_next_request_ahead_of_the_backlog(w: World) -> None:
    [held] = await w.forward([0])
    await run_until([w.uploader()], w.drained)
    backlog = await w.forward(range(1, 40))
    await _revoke(w, held)

    await run_until([w.uploader(batch_size=5)], w.drained)

    first, *rest = _requests(w)[1:]
    assert [(o["id"], o.get("revoked")) for o in first][:1] == [(held.stix_id, True)]
    assert len(first) == 5, "the lane's revocation shares its request with the backlog"
    assert all(o["id"] != held.stix_id for batch in rest for o in batch)
    assert w.sentinel.store[held.stix_id]["revoked"] is True
    entry = (await w.state.seen([held.stix_id]))[0]
    assert entry is not None
    assert entry.revoked
    assert_stored_once(w, backlog)
    for queue in (QUEUE, URGENT):
        counts = await w.bus.counts(queue)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (0, 0, 0)


async def test_a_refused_revocation_is_dead_lettered_on_the_lane(w: World) -> None:
    [held] = await w.forward([0])
    await run_until([w.uploader()], w.drained)
    await w.forward(range(1, 4))
    await _revoke(w, held)
    w.sentinel.faults.inject(FaultKind.REJECT_RECORDS, route=STIX_ROUTE, record_indexes=(0,))

    await run_until([w.uploader()], w.drained)

    [letter] = await w.bus.dead_letters(URGENT)
    assert letter.reason == "rejected_by_sentinel"
    assert await w.bus.dead_letters(QUEUE) == []
    assert w.sentinel.store[held.stix_id].get("revoked") is not True


async def test_stopping_gives_each_message_back_to_its_own_queue(w: World) -> None:
    [held] = await w.forward([0])
    await run_until([w.uploader()], w.drained)
    await w.forward(range(1, 4))
    await _revoke(w, held)
    uploader = w.uploader(linger_s=2.0, batch_size=50)
    stop = asyncio.Event()
    task = asyncio.create_task(uploader.run(stop))
    await asyncio.sleep(0.5)  # the batch holds both queues' messages and lingers for more
    for queue, held_now in ((URGENT, 1), (QUEUE, 3)):
        assert (await w.bus.counts(queue)).in_flight == held_now
    stop.set()
    await task

    assert (await w.state.counters())["abandoned"] == 4
    other = RedisStreamsBus(w.redis, consumer="someone-else", lock_duration_s=LOCK_S)
    for queue, waiting in ((URGENT, 1), (QUEUE, 3)):
        back = await other.receive(queue, max_messages=10, max_wait_s=1.0)
        assert [d.delivery_count for d in back] == [2] * waiting


async def test_an_upload_overtaken_by_a_revocation_while_it_waited_is_not_sent(
    w: World,
) -> None:
    """Past ``prepare`` and waiting for the quota, an ordinary upload must not follow a
    revocation of its id that reached Sentinel meanwhile (through the lane, or another
    replica): that would take the id from revoked back to live, which STIX forbids."""
    [first] = await w.forward([0])
    budget = RateBudget(w.redis, DEST, limit=1, window_s=2.0)
    assert await budget.acquire() == 0.0  # the window's only request is spent
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)  # the only wait on this path is the quota's
        await asyncio.sleep(seconds)

    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(budget=budget, sleep=sleep).run(stop))
    await wait_for(lambda: bool(naps), 5, what="the batch prepared, waiting for the quota")
    revoked = SeenEntry(first.request.fingerprint, datetime.now(UTC) + timedelta(days=1))
    await w.state.commit([(first.stix_id, replace(revoked, revoked=True))], now=datetime.now(UTC))

    await wait_for(w.drained, 10, what="the queue settled")
    stop.set()
    await task

    assert w.statuses() == [], "nothing was sent"
    assert (await w.state.counters())["superseded"] == 1


async def test_a_lane_message_and_a_queue_message_with_one_lock_token_are_kept_apart(
    w: World,
) -> None:
    """Redis gives out entry ids per stream, so a revocation and an upload written in the
    same millisecond carry the same lock token: each must still be settled on its own
    queue, neither mistaken for the other (the stream's last id is set so they collide)."""
    [held] = await w.forward([0])
    await run_until([w.uploader()], w.drained)
    upload_stream, lane_stream = w.bus.keys(QUEUE).stream, w.bus.keys(URGENT).stream
    for stream in (upload_stream, lane_stream):  # both streams go on from one id
        await w.redis.execute_command("XSETID", stream, "9999999999999-0")
    [other] = await w.forward([1])
    await _revoke(w, held)
    ids = [
        (await w.redis.xinfo_stream(s))["last-generated-id"] for s in (upload_stream, lane_stream)
    ]
    assert ids[0] == ids[1], "one entry id in both streams"

    await run_until([w.uploader()], w.drained)

    assert w.sentinel.store[held.stix_id]["revoked"] is True
    assert_stored_once(w, [other])
    counters = await w.state.counters()
    assert "lock_lost" not in counters
    assert counters["uploaded"] == 3
