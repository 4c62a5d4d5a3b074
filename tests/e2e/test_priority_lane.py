"""Urgent before backlog (issue 14): with a back-fill of 50,000 uploads queued, a revocation
(MATI's downgrade, then an analyst's suppression) reaches Sentinel within two quota windows,
through the real services on the default quota of 100 requests a window (a window of 10 s
here rather than 60, so the test is short; the backlog alone needs 50 windows). Without the
priority lane it would wait behind the whole backlog."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.pipeline import DESTINATION, Pipeline, mati_properties
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Message
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
BACKLOG = 50_000
#: Quota windows a revocation may take, at most, with the backlog queued.
WITHIN_WINDOWS = 2


async def _queue_backlog(pipeline: Pipeline, bus: RedisStreamsBus, count: int) -> None:
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
        if len(chunk) == 2000 or i == count - 1:
            await bus.publish(upload_queue(DESTINATION), chunk)
            chunk = []


async def _revoked_in_time(
    pipeline: Pipeline, bus: RedisStreamsBus, key: str, started: float
) -> int:
    """Wait until ``key`` is revoked in Sentinel, failing past ``WITHIN_WINDOWS`` quota
    windows after ``started``; returns how many uploads were still queued then."""

    async def revoked() -> bool:
        return pipeline.sims.sentinel.store[key].get("revoked") is True

    left = started + WITHIN_WINDOWS * WINDOW_S - time.monotonic()
    await wait_for(revoked, left, what=f"the revocation of {key} in Sentinel")
    return (await bus.counts(upload_queue(DESTINATION))).depth


@pytest.mark.timeout(240)
async def test_a_revocation_overtakes_a_backlog_of_50000(tmp_path: Path) -> None:
    feed = Feed(seed=61, count=300, days=6)
    env = {"SENTINEL_RATE_WINDOW_SECONDS": f"{WINDOW_S:g}"}
    async with Pipeline(tmp_path, feed=feed, env=env, sentinel_window_s=WINDOW_S) as pipeline:
        await pipeline.first_sync()
        sentinel = pipeline.sims.sentinel
        held = {mati_properties(obj)["mati_id"]: key for key, obj in sentinel.store.items()}
        mati_id, pulled = [m for m in sorted(held) if feed.type_of(feed.index_of(m)) != "md5"][:2]
        assert pipeline.redis is not None
        bus = RedisStreamsBus(pipeline.redis, consumer="back-fill")
        await _queue_backlog(pipeline, bus, BACKLOG)

        feed.revise({mati_id: {"mscore": 10}}, datetime.now(UTC))
        started = time.monotonic()
        assert await pipeline.sync_once() == 0
        waiting = await _revoked_in_time(pipeline, bus, held[mati_id], started)
        assert waiting >= BACKLOG - WITHIN_WINDOWS * 100 * 100, "the backlog was still there"

        started = time.monotonic()
        await run_cli(pipeline, "suppress", "add", pulled, "--reason", "sinkholed by us")
        waiting = await _revoked_in_time(pipeline, bus, held[pulled], started)
        assert waiting >= BACKLOG - 2 * WITHIN_WINDOWS * 100 * 100, "the backlog was still there"
        _, counters = await pipeline.counters()
        assert counters["revoked_low_confidence"] == counters["revoked_suppressed"] == 1
