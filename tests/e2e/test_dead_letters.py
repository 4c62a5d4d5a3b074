"""Records Sentinel rejects in an otherwise accepted request (DESIGN §4): they wait in the
upload dead-letter queue with Sentinel's own message, the rest is uploaded and committed, and
an operator's ``dlq replay`` sends them again once the cause is gone. A refusal no record owns
(Sentinel refusing everything for one reason) dead-letters nothing: the circuit opens with
Sentinel's message, and the backlog waits in the queue until Sentinel accepts again.

Everything an operator would run (``status``, ``dlq list``, ``dlq replay``) runs here as the
CLI process, with the pipeline's environment.
"""

from __future__ import annotations

import aiohttp
import pytest

from harness.pipeline import ACCEPT_ALL, DESTINATION
from shared.adapters.destination_state import CircuitState, DestinationState
from shared.core.indicator import HashType
from shared.core.stix import stix_id
from simulators.faults import SCHEMA_CHANGED, FaultKind
from simulators.feed import Feed
from simulators.sentinel import STIX_ROUTE
from tests.e2e.pipeline_tools import (
    PipelineFactory,
    assert_delivered,
    log_events,
    queue_counts,
    run_cli,
    upload_histogram,
)
from tests.helpers import wait_for

REJECTED_INDEXES = (1, 17, 42)
#: What the simulated Sentinel says about a record its backend could not ingest.
SENTINEL_MESSAGE = "The object could not be ingested, please retry later"


@pytest.mark.timeout(120)
async def test_partial_rejections_are_dead_lettered_then_replayed(
    make_pipeline: PipelineFactory,
) -> None:
    pipeline = await make_pipeline(feed=Feed(seed=41, count=450, days=10), env=ACCEPT_ALL)
    expected = pipeline.expected()
    assert len(expected.objects) == 450
    sentinel = pipeline.sims.sentinel
    sentinel.faults.inject(
        FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=REJECTED_INDEXES
    )

    await pipeline.start_service("filter")
    await pipeline.start_service("uploader")
    assert await pipeline.sync_once(timeout_s=60) == 0
    await pipeline.wait_drained(timeout_s=60, settle_s=0.5)

    # The three records of the first request the fault hit, by the simulator's own record.
    assert not sentinel.faults.pending
    first = next(r for r in sentinel.recorder.of(STIX_ROUTE) if r.status == 200)
    sent = first.json()["stixobjects"]
    rejected = {sent[i]["id"] for i in REJECTED_INDEXES}
    assert expected.objects.keys() - sentinel.store.keys() == rejected
    assert sentinel.store.keys() <= expected.objects.keys()

    # The rest is uploaded and committed: seen keys hold what was uploaded; none for the three.
    assert pipeline.redis is not None
    ids = sorted(expected.objects)
    seen = await DestinationState(pipeline.redis, DESTINATION).seen(ids)
    committed = {key: entry.fingerprint for key, entry in zip(ids, seen, strict=True) if entry}
    assert committed == {k: fp for k, fp in expected.objects.items() if k not in rejected}

    # The operator sees them: in the dead-letter queue with Sentinel's message, and in status.
    letters = (await run_cli(pipeline, "dlq", "list", "--json")).json()
    assert len(letters) == len(rejected)
    assert {letter["reason"] for letter in letters} == {"rejected_by_sentinel"}
    described = {key for key in rejected for letter in letters if key in letter["description"]}
    assert described == rejected, letters
    assert all(SENTINEL_MESSAGE in letter["description"] for letter in letters), letters
    mati_ids = {
        stix_id(record["id"], hash_type): record["id"]
        for record in pipeline.feed.records(range(len(pipeline.feed)))
        for hash_type in (None, *HashType)
    }
    assert {letter["indicator_id"] for letter in letters} == {mati_ids[k] for k in rejected}
    status = (await run_cli(pipeline, "status", "--json")).json()
    upload = next(e for e in status["entities"] if e["entity"] == f"upload.{DESTINATION}")
    assert upload["dead_letter"] == len(rejected)
    assert status["counters"]["dead_lettered"] == len(rejected)
    assert status["counters"]["dead_lettered_rejected_by_sentinel"] == len(rejected)

    # Replay: they arrive, and the dead-letter queue is empty.
    replay = await run_cli(pipeline, "dlq", "replay")
    assert f"replayed {len(rejected)} message(s)" in replay.stdout
    await wait_for(lambda: rejected <= sentinel.store.keys(), 30, what="the replayed records")
    await pipeline.wait_drained(timeout_s=30, settle_s=0.5)
    assert_delivered(pipeline, expected, max_uploads=1)
    assert upload_histogram(pipeline, expected) == {1: len(expected.objects)}
    assert (await run_cli(pipeline, "dlq", "list", "--json")).json() == []
    status = (await run_cli(pipeline, "status", "--json")).json()
    upload = next(e for e in status["entities"] if e["entity"] == f"upload.{DESTINATION}")
    assert upload["dead_letter"] == 0


@pytest.mark.timeout(120)
async def test_a_refusal_no_record_owns_holds_the_backlog_until_sentinel_accepts(
    make_pipeline: PipelineFactory,
) -> None:
    """Sentinel refuses every request alike, naming no record (a change on its side). The
    uploader opens the circuit with Sentinel's message, is not ready, ``status`` says why, the
    dead-letter queue stays empty and every indicator waits in the queue; once Sentinel
    accepts again a probe closes the circuit and each indicator arrives once."""
    pipeline = await make_pipeline(feed=Feed(seed=43, count=250, days=10), env=ACCEPT_ALL)
    expected = pipeline.expected()
    sentinel = pipeline.sims.sentinel
    sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=100_000)

    await pipeline.start_service("filter")
    await pipeline.start_service("uploader")
    assert await pipeline.sync_once(timeout_s=60) == 0
    assert pipeline.redis is not None
    state = DestinationState(pipeline.redis, DESTINATION)

    async def opened() -> bool:
        return (await state.circuit())[0] is CircuitState.OPEN

    await wait_for(opened, 30, what="the circuit to open")

    async def all_waiting() -> bool:
        depth, in_flight, dead = (await queue_counts(pipeline))["upload"]
        return depth + in_flight == len(expected.objects) and dead == 0

    await wait_for(all_waiting, 30, what="every indicator queued or held")
    status = (await run_cli(pipeline, "status", "--json")).json()
    assert status["circuit"] == "open"
    assert status["circuit_reason"].startswith("SystemicRejection: ")
    assert SCHEMA_CHANGED in status["circuit_reason"]
    assert status["counters"]["systemic_rejection"] >= 1
    assert "dead_lettered" not in status["counters"]
    assert (await run_cli(pipeline, "dlq", "list", "--json")).json() == []
    port = next(
        int(event["health_port"])
        for event in log_events(pipeline, "uploader")
        if event.get("event") == "service.started"
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            assert response.status == 503
            checks = (await response.json())["checks"]
        assert checks["circuit"].startswith("not_ready: circuit open: SystemicRejection: ")
        assert sentinel.store == {}

        sentinel.faults.clear()  # Sentinel accepts again
        await wait_for(lambda: not sentinel.store.keys() < expected.objects.keys(), 60,
                       what="every indicator uploaded")  # fmt: skip
        await pipeline.wait_drained(timeout_s=60, settle_s=0.5)
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            assert response.status == 200

    assert_delivered(pipeline, expected, max_uploads=1)
    assert (await state.circuit())[0] is CircuitState.CLOSED
    assert (await queue_counts(pipeline))["upload"] == (0, 0, 0)
