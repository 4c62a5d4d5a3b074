"""The uploader's ordinary work: what it is given arrives in Sentinel once and is committed, in
parallel lanes and through what only delays it (a 429, 5xx answers, timeouts, resets, a quota
shared by replicas); what must not be sent (superseded, already uploaded, unreadable) is not."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from shared.adapters.rate_budget import RateBudget
from shared.adapters.sentinel_client import SentinelClient, UploadResult
from shared.contract.bus import Message
from shared.contract.messages import UploadRequest, upload_message
from shared.core.fingerprint import ForwardReason, SeenEntry
from simulators.faults import FaultKind
from simulators.sentinel import STIX_ROUTE
from tests.services.uploader_rig import (
    DEST,
    POLICY,
    QUEUE,
    WINDOW_S,
    World,
    WorldFactory,
    assert_committed,
    assert_stored_once,
    queued,
    run_until,
)

V1_REFUSED = "upload message has no STIX object (upload.indicator/1, queued by an older filter)"


async def test_every_record_is_uploaded_once_then_committed_and_completed(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    items = await w.forward(range(12))

    await run_until([w.uploader()], w.drained)

    assert_stored_once(w, items)
    await assert_committed(w, items)
    counters = await w.state.counters()
    assert counters["uploaded"] == 12
    assert counters["requests"] == 1
    assert (await w.bus.counts(QUEUE)).dead_letter == 0
    requests = [r for r in caplog.records if r.getMessage() == "upload.request"]
    assert [r.m2s_fields["accepted"] for r in requests] == [12]  # type: ignore[attr-defined]
    for token in (t.access_token for t in w.entra.tokens_issued):
        assert token not in caplog.text
        assert all(token not in str(r.__dict__) for r in caplog.records)


async def test_lanes_overlap_requests_and_settle_each_batch_on_its_own(w: World) -> None:
    """No simulator fault holds a request until another one has arrived, so a thin wrapper
    around the real client holds the first request until a second is out: only an uploader
    with a second lane ever sends it (one lane would time out here). The requests are real."""
    items = await w.forward(range(6))
    second_out = asyncio.Event()
    calls = 0

    class HoldFirst:
        def __init__(self, real: SentinelClient) -> None:
            self.real = real

        async def upload(self, objects: Sequence[Mapping[str, Any]]) -> UploadResult:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.wait_for(second_out.wait(), timeout=10)
            else:
                second_out.set()
            return await self.real.upload(objects)

    await run_until([w.uploader(wrap=HoldFirst, lanes=2, batch_size=3)], w.drained)

    assert_stored_once(w, items)
    await assert_committed(w, items)
    counters = await w.state.counters()
    assert (counters["requests"], counters["uploaded"]) == (2, 6)


async def test_the_seen_entry_keeps_the_source_tag_the_message_carried(w: World) -> None:
    """The filter recognises a record it already judged by the tag stored with the entry."""
    q = queued(0)
    tagged = replace(q.request, source_tag=bytes(range(1, 9)))
    assert await w.state.claim([(q.stix_id, q.request.fingerprint)], ttl_s=600) == [True]
    await w.bus.publish(QUEUE, [upload_message(tagged, run_id="r", source_message_id="raw-0")])

    await run_until([w.uploader()], w.drained)

    [entry] = await w.state.seen([q.stix_id])
    assert entry is not None
    assert (entry.fingerprint, entry.source) == (q.request.fingerprint, tagged.source_tag)


async def test_a_revocation_and_a_later_generation_are_committed_as_such(w: World) -> None:
    """Accepted revocations are recorded as revoked (never revoked twice, never un-revoked);
    a later generation goes out under its own id and is recorded under the lineage's."""
    first, second = queued(0), queued(1)
    revoke = UploadRequest(
        first.request.draft.reissued(first.stix_id, revoked=True), ForwardReason.REVOKE
    )
    later_id = "indicator--00000000-0000-5000-8000-0000000000e1"
    again = UploadRequest(
        second.request.draft.reissued(later_id),
        ForwardReason.NEW,
        lineage=second.stix_id,
        generation=1,
    )
    claims = [(r.stix_id, r.fingerprint) for r in (revoke, again)]
    assert await w.state.claim(claims, ttl_s=600) == [True, True]
    await w.bus.publish(
        QUEUE, [upload_message(r, run_id="r", source_message_id="raw") for r in (revoke, again)]
    )

    await run_until([w.uploader()], w.drained)

    assert first.stix_id in w.sentinel.revoked
    assert w.sentinel.store[first.stix_id]["revoked"] is True
    assert later_id in w.sentinel.store
    assert second.stix_id not in w.sentinel.store
    gone, later = await w.state.seen([first.stix_id, second.stix_id])
    assert gone is not None
    assert later is not None
    assert (gone.revoked, gone.generation, gone.fingerprint) == (True, 0, revoke.fingerprint)
    assert (later.revoked, later.generation, later.fingerprint) == (False, 1, again.fingerprint)
    assert await w.state.claims([first.stix_id, second.stix_id]) == [None, None]


async def test_a_message_of_an_earlier_generation_never_undoes_what_sentinel_holds(
    w: World,
) -> None:
    """Messages that waited out their claims: a revocation of generation 0 after generation 1
    went live, and an upload of generation 0 after it was revoked. Uploading either would
    revoke the live object's lineage or try to un-revoke an id; both are superseded."""
    first, second = queued(0), queued(1)
    now = datetime.now(UTC).replace(microsecond=0)  # what a seen entry keeps: milliseconds
    until = now + POLICY.ipv4_expiration
    live = SeenEntry("0" * 32, until, generation=1)
    gone = SeenEntry("1" * 32, until, revoked=True)
    await w.state.commit([(first.stix_id, live), (second.stix_id, gone)], now=now)
    late_revocation = UploadRequest(
        first.request.draft.reissued(first.stix_id, revoked=True), ForwardReason.REVOKE
    )
    late_upload = second.request
    await w.bus.publish(
        QUEUE,
        [
            upload_message(r, run_id="r", source_message_id="raw")
            for r in (late_revocation, late_upload)
        ],
    )

    await run_until([w.uploader()], w.drained)

    assert len(w.sentinel.store) == 0
    assert await w.state.seen([first.stix_id, second.stix_id]) == [live, gone]
    counters = await w.state.counters()
    assert counters["superseded"] == 2


async def test_superseded_uploaded_and_bad_messages_never_reach_sentinel(w: World) -> None:
    superseded, uploaded, fresh = await w.forward([0, 1, 2])
    # A newer version of record 0 was queued since: its claim holds another fingerprint.
    await w.state.claim([(superseded.stix_id, "f" * 32)], ttl_s=600)
    # Record 1 went up before a crash kept its message from being completed.
    now = datetime.now(UTC)
    valid_until = now + POLICY.expiration_for(uploaded.observable)
    await w.state.commit(
        [(uploaded.stix_id, SeenEntry(uploaded.request.fingerprint, valid_until))], now=now
    )
    # The first schema carried the raw record for the uploader to map: refused by name.
    first_schema = {"record": {"id": "ipv4--1"}, "stix_id": fresh.stix_id, "fingerprint": "0" * 32}
    await w.bus.publish(
        QUEUE,
        [
            Message(body=b"not json", message_id="junk-1"),
            Message(body=orjson.dumps({**first_schema, "reason": "new"}), message_id="v1-1"),
        ],
    )

    batch = await w.bus.receive(QUEUE, max_messages=100, max_wait_s=1.0)
    assert len(batch) == 5
    await w.uploader().process(batch)

    assert list(w.sentinel.store) == [fresh.stix_id]
    assert await w.drained()
    dead = sorted((d.reason, d.description) for d in await w.bus.dead_letters(QUEUE))
    assert dead == [
        ("malformed_message", V1_REFUSED),
        ("malformed_message", "upload message is not JSON"),
    ]
    counters = await w.state.counters()
    assert counters["superseded"] == counters["already_uploaded"] == counters["uploaded"] == 1
    assert counters["requests"] == 1
    assert counters["dead_lettered_malformed_message"] == counters["dead_lettered"] == 2


async def test_429_pauses_every_replica_then_the_same_batch_arrives(w: World) -> None:
    items = await w.forward(range(3))
    w.sentinel.faults.inject(FaultKind.RATE_LIMIT, route=STIX_ROUTE, retry_after_s=1)
    budget = RateBudget(w.redis, DEST, limit=100, window_s=WINDOW_S)
    paused: list[float] = []

    async def watch() -> bool:
        paused.append(await budget.paused_for())
        return await w.drained()

    await run_until([w.uploader(budget=budget)], watch)

    assert max(paused) > 0  # the pause lived in Redis, where every replica reads it
    assert w.statuses() == [429, 200]
    first, second = w.sentinel.request_log
    assert second.at - first.at >= 0.9  # lower bound: Retry-After was honoured
    assert_stored_once(w, items)
    counters = await w.state.counters()
    assert (counters["throttled"], counters["throttle_wait_seconds"]) == (1, 1)


async def test_5xx_timeouts_and_resets_are_retried_until_everything_arrives(
    make_world: WorldFactory,
) -> None:
    async with make_world(timeout_s=0.5) as w:
        items = await w.forward(range(6))
        faults = w.sentinel.faults
        faults.inject(FaultKind.SERVER_ERROR, route=STIX_ROUTE, status=503)
        faults.inject(FaultKind.TIMEOUT, route=STIX_ROUTE, delay_s=1.0)
        faults.inject(FaultKind.RESET, route=STIX_ROUTE)
        faults.inject(FaultKind.EMPTY_500, route=STIX_ROUTE)

        await run_until([w.uploader()], w.drained)

        assert_stored_once(w, items)
        await assert_committed(w, items)
        counters = await w.state.counters()
        assert (counters["retried"], counters["uploaded"]) == (4, 6)
        assert (await w.bus.counts(QUEUE)).dead_letter == 0


async def test_two_replicas_share_one_budget_and_lose_nothing(make_world: WorldFactory) -> None:
    async with make_world(requests_per_window=10) as w:
        items = await w.forward(range(20))
        other: Redis = Redis.from_url(w.redis_server.url)
        try:
            replicas = [
                w.uploader(
                    budget=RateBudget(client, DEST, limit=10, window_s=WINDOW_S),
                    redis=client,
                    consumer=name,
                    batch_size=1,
                )
                for client, name in ((w.redis, "replica-a"), (other, "replica-b"))
            ]
            await run_until(replicas, w.drained)
        finally:
            await other.aclose()

        assert w.sentinel.max_requests_in_any_window() <= 10
        assert set(w.statuses()) == {200}
        assert_stored_once(w, items)
        await assert_committed(w, items)
        assert (await w.state.counters())["uploaded"] == 20
