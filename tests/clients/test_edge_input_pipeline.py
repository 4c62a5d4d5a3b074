"""Hostile MATI input met by the services behind the client: the fetcher keeps its checkpoint
before a page it refused and fails the sync with the reason instead of crashing, publishes a
stand-in for a record no message can carry (megabytes, nested too deep) and goes on, and the
filter dead-letters such a record, or any broken record, with its reason and leaves nothing
unsettled. The fetcher's rig (tests/services/fetcher_rig.py) and the filter's bus moves
(tests/services/filter_rig.py) over a real Redis."""

from __future__ import annotations

import random
import re
from typing import Any, Final

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
from shared.core.record_bounds import MAX_RECORD_BYTES
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


#: The one record of MATI's page that no message can carry, and whose stand-in is published.
ODD_ONE: Final = "url--00000000-0000-5000-8000-999999999999"


@pytest.mark.parametrize(
    ("kind", "options", "reason", "detail"),
    [
        pytest.param(
            FaultKind.DEEP_JSON,
            {"depth": 300},
            "too_deep",
            "record nested more than 254 levels deep: no message can carry it",
            id="too_deep",
        ),
        pytest.param(
            FaultKind.HUGE_VALUE,
            {},
            "too_large",
            rf"record has 4194\d\d\d bytes as JSON, more than {MAX_RECORD_BYTES}",
            id="too_large",
        ),
        pytest.param(
            FaultKind.HUGE_VALUE,
            {"size_bytes": 64 * 1024},
            "bad_field",
            f"url value has {64 * 1024} characters, more than {MAX_VALUE_CHARS}",
            id="value_too_long",
        ),
    ],
)
async def test_a_record_no_message_can_carry_costs_that_record_and_its_page_goes_on(
    server_ssl: Any,
    client_ssl: Any,
    redis_client: Redis,
    kind: FaultKind,
    options: dict[str, Any],
    reason: str,
    detail: str,
) -> None:
    """Nested deeper than orjson writes, or larger than a message may be: the fetcher publishes
    a stand-in naming it, the filter dead-letters it with that reason and forwards the rest.
    (Before, the deep record refused its whole page on every sync, and a record of megabytes
    went to the bus whole, which Service Bus refuses.) A value past its own bound in a record
    within the record's is the parser's ``bad_field``, as before."""
    async with world(server_ssl, client_ssl, redis_client) as w:
        w.mati.faults.inject(kind, route="indicator", **options)
        summary = await w.sync()
        assert summary.outcome is Outcome.COMPLETED
        assert summary.published == 3  # the page of the fault, whole: judging is the filter's

        worker, bus = filter_worker(redis_client)
        outcome = await worker.handle(await take(bus, SOURCE, 3))

    assert outcome["received"] == 3
    assert outcome[f"rejected_{reason}"] == 1
    assert outcome["forwarded"] == 2
    (dead,) = await bus.dead_letters(SOURCE)
    assert dead.reason == INVALID_RECORD
    assert re.fullmatch(f"{reason}: {detail}", dead.description), dead.description
    assert dead.properties["indicator_id"] == ODD_ONE
    assert len(dead.body) < MAX_RECORD_BYTES
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
