"""Hostile MATI input met by the services behind the client: the fetcher keeps its checkpoint
before a page it refused and fails the sync with the reason instead of crashing, and the filter
dead-letters a record of megabytes, or any broken record, with its reason and leaves nothing
unsettled. The fetcher's rig (tests/services/fetcher_rig.py) and the filter's bus moves
(tests/services/filter_rig.py) over a real Redis."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.fetcher.sync import Outcome
from services.filter.config import FilterConfig
from services.filter.worker import INVALID_RECORD, FilterWorker
from shared.adapters.destination_state import DestinationState
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Message
from shared.core.filters import FilterPolicy
from shared.core.parsing import MAX_VALUE_CHARS, Rejection, parse_indicator, parse_json
from simulators.fault_bodies import DEFAULT_HUGE_VALUE
from simulators.faults import FaultKind
from tests.services.fetcher_rig import CONFIG, ids, newest, world
from tests.services.filter_rig import DEST, QUEUE, SOURCE, STIX, Clock, publish, take, uploads
from tests.unit.fuzz_records import hostile_records

pytestmark = pytest.mark.timeout(60)


#: Lets every well-formed record through, so hostile ones reach the STIX mapping.
EVERYTHING = FilterPolicy(minimum_confidence=0, minimum_threat_score=0, exclude_osint=False)


def filter_worker(
    redis: Redis, policy: FilterPolicy | None = None
) -> tuple[FilterWorker, RedisStreamsBus]:
    """The destination's filter on the fetcher's Redis (both rigs serve destination "acme")."""
    bus = RedisStreamsBus(redis, consumer="filter-1", lock_duration_s=5.0)
    worker = FilterWorker(
        FilterConfig(DEST, filter_policy=policy or FilterPolicy(), stix_policy=STIX),
        bus=bus,
        state=DestinationState(redis, DEST),
        clock=Clock(),
        rng=random.Random(1),
    )
    return worker, bus


async def test_a_page_refused_for_its_size_leaves_the_checkpoint_at_the_page_before(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client) as w:
        w.mati.faults.inject(FaultKind.OVERSIZED_BODY, route="indicator", after=1)
        summary = await w.sync()
        first = await w.drain()

        assert summary.outcome is Outcome.FAILED
        assert summary.error is not None
        assert "MalformedResponse: MATI GET /v4/indicator: answer larger than the 32 MiB" in (
            summary.error
        )
        window = w.expected(w.first_queries()[0])
        assert ids(first) == window[: CONFIG.page_size]
        checkpoint = await w.checkpoint()
        assert checkpoint == newest(first)

        # Once MATI answers sensibly again, the next run goes on from there and loses nothing.
        summary = await w.sync()
        rest = await w.drain()
        assert summary.outcome is Outcome.COMPLETED
        assert set(ids(first) + ids(rest)) == set(window)


async def test_a_record_too_deep_to_publish_fails_the_sync_instead_of_the_fetcher(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    """Decodable (300 levels) but not encodable again: without the client's check, the publish
    raised a TypeError out of the sync, and the fetcher died on every run."""
    async with world(server_ssl, client_ssl, redis_client) as w:
        w.mati.faults.inject(FaultKind.DEEP_JSON, route="indicator", depth=300)
        summary = await w.sync()
        assert summary.outcome is Outcome.FAILED
        assert summary.error is not None
        assert "holds a record nested too deep to pass on" in summary.error
        assert await w.drain() == []
        assert await w.checkpoint() is None


async def test_a_record_of_megabytes_is_dead_lettered_by_the_filter_and_its_page_goes_on(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client) as w:
        w.mati.faults.inject(FaultKind.HUGE_VALUE, route="indicator")
        summary = await w.sync()
        assert summary.outcome is Outcome.COMPLETED
        assert summary.published == 3  # the page of the fault, whole: judging is the filter's

        worker, bus = filter_worker(redis_client)
        outcome = await worker.handle(await take(bus, SOURCE, 3))

    assert outcome["received"] == 3
    assert outcome["rejected_bad_field"] == 1
    assert outcome["forwarded"] == 2
    (dead,) = await bus.dead_letters(SOURCE)
    assert dead.reason == INVALID_RECORD
    assert dead.description == (
        f"bad_field: url value has {DEFAULT_HUGE_VALUE} characters, more than {MAX_VALUE_CHARS}"
    )
    counts = await bus.counts(SOURCE)
    assert (counts.depth, counts.in_flight) == (0, 0)
    assert (await bus.counts(QUEUE)).depth == 2


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(records=st.lists(hostile_records, min_size=1, max_size=8))
async def test_the_filter_settles_every_hostile_record_and_dead_letters_each_rejection(
    redis_client: Redis, records: list[Any]
) -> None:
    """Each example is a batch of hostile records on the real bus: every one is settled (none
    left locked or waiting), and exactly those the parser rejects are dead-lettered, each with
    its reason; what goes on towards Sentinel is bounded."""
    await redis_client.flushall()  # examples share the test's Redis: each starts afresh
    worker, bus = filter_worker(redis_client, EVERYTHING)
    await bus.ensure(SOURCE)
    await bus.ensure(QUEUE)
    bodies = [orjson.dumps(record) for record in records]
    messages = [Message(body=body, message_id=f"fuzz-{i}") for i, body in enumerate(bodies)]
    await publish(bus, *messages)
    outcome = await worker.handle(await take(bus, SOURCE, len(messages)))

    rejected = [verdict for verdict in map(_verdict, bodies) if isinstance(verdict, Rejection)]
    dead = await bus.dead_letters(SOURCE, limit=100)
    assert outcome["received"] == len(messages)
    assert len(dead) == len(rejected)
    assert {d.reason for d in dead} <= {INVALID_RECORD}
    assert sorted(d.description.split(":", 1)[0] for d in dead) == sorted(
        str(r.reason) for r in rejected
    )
    counts = await bus.counts(SOURCE)
    assert (counts.depth, counts.in_flight) == (0, 0)
    # What went on towards Sentinel is bounded: a pattern is the value, escaped, in a short frame.
    for request in await uploads(bus):
        assert len(str(request.draft.body["pattern"])) < 2 * MAX_VALUE_CHARS + 100


def _verdict(body: bytes) -> object:
    """What the parser makes of a body: the oracle for what the filter must dead-letter."""
    raw = parse_json(body)
    return raw if isinstance(raw, Rejection) else parse_indicator(raw)
