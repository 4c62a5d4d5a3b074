"""Urgent before backlog (issue 14): with a back-fill of 50,000 uploads queued, a revocation
(MATI's downgrade, then an analyst's suppression) reaches Sentinel within two quota windows,
through the real services on the default quota of 100 requests a window (a window of 10 s
here rather than 60, so the test is short; the backlog alone needs 50 windows). Without the
priority lane it would wait behind the whole backlog.

On Service Bus (the real SDK against the fake AMQP peer) the same holds with a back-fill
sized to that peer (5,000 uploads) and a quota of 5 requests a window, so that the back-fill
again outlasts the two windows many times over."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.pipeline import DESTINATION, Pipeline, mati_properties
from shared.contract.bus import Bus, Message
from shared.contract.messages import UploadRequest, raw_message, upload_message, upload_queue
from shared.core.filters import FilterPolicy, evaluate
from shared.core.fingerprint import ForwardReason
from shared.core.indicator import Indicator
from shared.core.parsing import parse_indicator
from shared.core.stix import Draft
from simulators.feed import Feed
from tests.e2e.pipeline_tools import run_cli
from tests.helpers import wait_for

WINDOW_S = 10.0
#: Per bus: (uploads queued ahead, Sentinel's requests per window).
SIZES = {"redis": (50_000, 100), "servicebus": (5_000, 5)}
#: Quota windows a revocation may take, at most, with the backlog queued.
WITHIN_WINDOWS = 2


async def _queue_backlog(pipeline: Pipeline, bus: Bus, count: int) -> None:
    """``count`` ordinary uploads queued at once, as a back-fill's filter queues them."""
    feed = Feed(seed=901, count=count, days=30)
    policy = pipeline.settings.stix_policy()
    everything = FilterPolicy(minimum_confidence=0, minimum_threat_score=0, exclude_osint=False)
    chunk: list[Message] = []
    for i in range(count):
        record = feed.record(i)
        indicator = parse_indicator(record)
        assert isinstance(indicator, Indicator)
        observables = evaluate(indicator, everything)
        assert isinstance(observables, tuple)
        request = UploadRequest(Draft.of(observables[0], policy), ForwardReason.NEW)
        raw = raw_message(record, run_id="back-fill")
        chunk.append(upload_message(request, run_id="back-fill", source_message_id=raw.message_id))
        if len(chunk) == 1000 or i == count - 1:
            await bus.publish(upload_queue(DESTINATION), chunk)
            chunk = []


async def _revoked_in_time(pipeline: Pipeline, bus: Bus, key: str, started: float) -> int:
    """Wait until ``key`` is revoked in Sentinel, failing past ``WITHIN_WINDOWS`` quota
    windows after ``started``; returns how many uploads were still queued then."""

    async def revoked() -> bool:
        return pipeline.sims.sentinel.store[key].get("revoked") is True

    left = started + WITHIN_WINDOWS * WINDOW_S - time.monotonic()
    await wait_for(revoked, left, what=f"the revocation of {key} in Sentinel")
    return (await bus.counts(upload_queue(DESTINATION))).depth


@pytest.mark.timeout(300)
async def test_a_revocation_overtakes_a_backlog(tmp_path: Path, bus_env: dict[str, str]) -> None:
    backlog, per_window = SIZES[bus_env["BUS"]]
    #: What the uploads ahead can shrink by within the windows a revocation may take.
    drained = WITHIN_WINDOWS * per_window * 100
    feed = Feed(seed=61, count=300, days=6)
    env = {
        **bus_env,
        "SENTINEL_RATE_WINDOW_SECONDS": f"{WINDOW_S:g}",
        "SENTINEL_REQUESTS_PER_MINUTE": str(per_window),
    }
    async with Pipeline(
        tmp_path,
        feed=feed,
        env=env,
        sentinel_requests_per_minute=per_window,
        sentinel_window_s=WINDOW_S,
    ) as pipeline:
        await pipeline.first_sync()
        sentinel = pipeline.sims.sentinel
        held = {mati_properties(obj)["mati_id"]: key for key, obj in sentinel.store.items()}
        mati_id, pulled = [m for m in sorted(held) if feed.type_of(feed.index_of(m)) != "md5"][:2]
        bus = pipeline.observer
        await _queue_backlog(pipeline, bus, backlog)

        feed.revise({mati_id: {"mscore": 10}}, datetime.now(UTC))
        started = time.monotonic()
        assert await pipeline.sync_once() == 0
        waiting = await _revoked_in_time(pipeline, bus, held[mati_id], started)
        assert waiting >= backlog - drained, "the backlog was still there"

        started = time.monotonic()
        await run_cli(pipeline, "suppress", "add", pulled, "--reason", "sinkholed by us")
        waiting = await _revoked_in_time(pipeline, bus, held[pulled], started)
        assert waiting >= backlog - 2 * drained, "the backlog was still there"
        _, counters = await pipeline.counters()
        assert counters["revoked_low_confidence"] == counters["revoked_suppressed"] == 1
