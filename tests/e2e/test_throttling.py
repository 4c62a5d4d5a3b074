"""A 429 storm and 5xx faults from the simulated Sentinel, two uploader replicas: everything
arrives, and the two together never exceed the quota (DESIGN §4, the shared rate budget).

The simulator's own request log is the judge: it counts every request that reached it,
throttled and faulted ones included, by arrival time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.pipeline import ACCEPT_ALL, DESTINATION, Pipeline
from shared.adapters.servicebus_messages import REPLAY_TO
from shared.contract.messages import INDICATORS, revocation_queue, upload_queue
from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.sentinel import STIX_ROUTE
from tests.e2e.pipeline_tools import (
    PipelineFactory,
    assert_delivered,
    log_events,
    upload_histogram,
)
from tests.servicebus_peer import FakeServiceBus, ReplayRule

LIMIT = 10
WINDOW_S = 3.0


@pytest.mark.timeout(120)
async def test_429_storm_and_5xx_two_uploaders_stay_within_quota(
    make_pipeline: PipelineFactory,
) -> None:
    pipeline = await make_pipeline(
        feed=Feed(seed=31, count=2000, days=20),
        env={
            **ACCEPT_ALL,
            "SENTINEL_REQUESTS_PER_MINUTE": str(LIMIT),
            "SENTINEL_RATE_WINDOW_SECONDS": f"{WINDOW_S:g}",
        },
        sentinel_requests_per_minute=LIMIT,
        sentinel_window_s=WINDOW_S,
    )
    expected = pipeline.expected()
    assert len(expected.objects) == 2000  # twenty requests of 100, before faults
    faults = pipeline.sims.sentinel.faults
    faults.inject(FaultKind.RATE_LIMIT, route=STIX_ROUTE, times=2, retry_after_s=1)
    faults.inject(FaultKind.SERVER_ERROR, route=STIX_ROUTE, status=503, after=2)
    faults.inject(FaultKind.RATE_LIMIT, route=STIX_ROUTE, times=2, retry_after_s=2, after=3)
    faults.inject(FaultKind.EMPTY_500, route=STIX_ROUTE, after=4)
    faults.inject(FaultKind.TIMEOUT, route=STIX_ROUTE, delay_s=1.5, after=5)
    faults.inject(
        FaultKind.RATE_LIMIT, route=STIX_ROUTE, retry_after_s=1, message_retry_s=1, after=6
    )
    injected = {
        FaultKind.RATE_LIMIT: 5,
        FaultKind.SERVER_ERROR: 1,
        FaultKind.EMPTY_500: 1,
        FaultKind.TIMEOUT: 1,
    }

    await pipeline.start_service("filter")
    await pipeline.start_service("uploader", label="uploader-1")
    await pipeline.start_service("uploader", label="uploader-2")
    assert await pipeline.sync_once(timeout_s=60) == 0
    await pipeline.wait_drained(timeout_s=90, settle_s=0.5)

    sentinel = pipeline.sims.sentinel
    assert not faults.pending, f"faults never served: {faults.pending}"
    served = [r.fault for r in sentinel.recorder.of(STIX_ROUTE) if r.fault is not None]
    assert {kind: served.count(kind) for kind in set(served)} == injected
    # The simulator's count, by arrival, of every request (throttled and faulted included).
    busiest = sentinel.max_requests_in_any_window(window_s=WINDOW_S)
    assert busiest <= LIMIT, f"{busiest} requests within {WINDOW_S}s; the quota is {LIMIT}"
    # Only the injected 429s: the replicas never made the simulator throttle them itself.
    own_429s = [r for r in sentinel.recorder.of(STIX_ROUTE) if r.status == 429 and not r.fault]
    assert not own_429s, f"the simulator throttled {len(own_429s)} requests itself"

    assert_delivered(pipeline, expected, max_uploads=2)
    assert upload_histogram(pipeline, expected) == {1: len(expected.objects)}
    _, destination = await pipeline.counters()
    assert destination.get("throttled", 0) >= 1, destination
    assert destination.get("retried", 0) >= 1, destination
    # Both replicas took part: each logged requests of its own.
    for label in ("uploader-1", "uploader-2"):
        requests = [e for e in log_events(pipeline, label) if e.get("event") == "upload.request"]
        assert requests, f"{label} sent no request"


@pytest.mark.timeout(120)
async def test_service_bus_locks_are_renewed_while_an_upload_waits_out_faults(
    tmp_path: Path,
) -> None:
    """On Service Bus the uploader renews the batch's locks while it backs off from a 5xx and
    waits out a 429 (DESIGN §4): the batch must come through, each record once."""
    with FakeServiceBus() as namespace:
        namespace.create_topic(INDICATORS.name)
        namespace.create_subscription(
            INDICATORS.name, DESTINATION, rule=ReplayRule(REPLAY_TO, DESTINATION)
        )
        namespace.create_queue(upload_queue(DESTINATION).name)
        namespace.create_queue(revocation_queue(DESTINATION).name)
        env = {"BUS": "servicebus", "SERVICEBUS_CONNECTION_STRING": namespace.connection_string}
        async with Pipeline(tmp_path, feed=Feed(seed=3, count=500, days=29), env=env) as p:
            faults = p.sims.sentinel.faults
            faults.inject(FaultKind.SERVER_ERROR, route="stix_upload", times=1)
            faults.inject(FaultKind.RATE_LIMIT, route="stix_upload", times=1, retry_after_s=2)
            await p.start_service("filter")
            await p.start_service("uploader")
            assert await p.sync_once() == 0
            await p.wait_drained(timeout_s=60)
            expected = p.expected().objects
            assert set(p.sims.sentinel.store) == set(expected)
            assert all(p.sims.sentinel.uploads_for(key) == 1 for key in expected)
            _, counters = await p.counters()
            assert counters["retried"] >= 1
            assert counters["throttled"] >= 1
        assert namespace.failure is None
