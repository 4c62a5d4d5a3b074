"""``kill -9`` during a backfill, then a restart: nothing is lost, nothing uploaded more than
twice (DESIGN §4). Each service dies at a seeded random point after polling shows it is busy;
Redis itself dies too. The workspace must then hold exactly ``Pipeline.expected()``.

A graceful stop (SIGTERM) of every service mid-work must exit 0 within the drain timeout and
lose nothing either.
"""

from __future__ import annotations

import asyncio
import random
import signal
from functools import partial

import pytest

from harness.pipeline import ACCEPT_ALL, Pipeline
from services.cli.supervisor import Child
from simulators.feed import Feed
from tests.e2e.pipeline_tools import (
    PipelineFactory,
    assert_delivered,
    log_events,
    queue_counts,
    release_fetcher_lease,
    upload_histogram,
)
from tests.helpers import wait_for

#: Indicators in each backfill: five MATI pages of 1000, fifty Sentinel requests of 100.
FEED_SIZE = 5000
#: Kills of the filter, and of the uploader, at random points of one backfill.
KILLS = 3
#: Uploads ~7 requests a second (30 per 3 s window plus the budget's 1 s margin), so the upload
#: queue stays busy for several seconds: time for a kill to land in the middle of it.
SLOW_UPLOADS = {"SENTINEL_REQUESTS_PER_MINUTE": "30", "SENTINEL_RATE_WINDOW_SECONDS": "3"}


async def backfill(make_pipeline: PipelineFactory, seed: int, **env: str) -> Pipeline:
    pipeline = await make_pipeline(
        feed=Feed(seed=seed, count=FEED_SIZE, days=20), env={**ACCEPT_ALL, **env}
    )
    assert len(pipeline.expected().objects) == FEED_SIZE
    return pipeline


def start_sync(pipeline: Pipeline, label: str) -> asyncio.Task[int]:
    """``sync --once`` as its own process, in the background; the task gives its exit code."""
    return asyncio.create_task(pipeline.sync_once(timeout_s=90), name=label)


async def fetched(pipeline: Pipeline) -> int:
    feed, _ = await pipeline.counters()
    return feed.get("fetched", 0)


async def received_at_least(pipeline: Pipeline, count: int) -> bool:
    """The filter counted ``count`` raw messages received (and settled) so far."""
    _, destination = await pipeline.counters()
    return destination.get("received", 0) >= count


def stored_at_least(pipeline: Pipeline, count: int) -> bool:
    return len(pipeline.sims.sentinel.store) >= count


async def kill(pipeline: Pipeline, child: Child) -> None:
    assert pipeline.processes is not None
    assert child.running, f"{child.name} exited (code {child.process.returncode}) before the kill"
    await pipeline.processes.kill(child)
    assert child.process.returncode == -signal.SIGKILL


async def finish(pipeline: Pipeline, sync: asyncio.Task[int]) -> None:
    assert await sync == 0, "the sync did not complete"
    await pipeline.wait_drained(timeout_s=60, settle_s=0.5)


@pytest.mark.timeout(120)
async def test_fetcher_killed_mid_sync_then_sync_again_loses_nothing(
    make_pipeline: PipelineFactory,
) -> None:
    rng = random.Random(1)
    pipeline = await backfill(make_pipeline, seed=21)
    pipeline.sims.mati.page_latency_s = 0.3  # the sync takes about two seconds
    await pipeline.start_service("filter")
    await pipeline.start_service("uploader")
    assert pipeline.processes is not None
    sync = await pipeline.processes.start("cli", "sync", "--once", label="sync-killed")

    await wait_for(lambda: fetched(pipeline), 30, what="a first page published")
    await asyncio.sleep(rng.uniform(0.0, 0.5))  # a random point of the sync
    await kill(pipeline, sync)
    at_kill = await fetched(pipeline)
    assert 0 < at_kill < FEED_SIZE, "the kill did not land in the middle of the sync"

    await release_fetcher_lease(pipeline)
    assert await pipeline.sync_once(timeout_s=60) == 0
    await pipeline.wait_drained(timeout_s=60, settle_s=0.5)

    expected = pipeline.expected()
    print("counters", await pipeline.counters(), "uploads", upload_histogram(pipeline, expected))
    assert_delivered(pipeline, expected, max_uploads=2)
    feed, _ = await pipeline.counters()
    # The second sync resumed from the checkpoint the killed one left, not from scratch.
    assert feed["sync_completed"] == 1
    assert feed["fetched"] < 2 * FEED_SIZE, feed


@pytest.mark.timeout(120)
async def test_filter_killed_while_busy_loses_nothing(make_pipeline: PipelineFactory) -> None:
    rng = random.Random(2)
    pipeline = await backfill(make_pipeline, seed=22, FILTER_BATCH_SIZE="25")
    await pipeline.start_service("uploader")
    # The whole backfill waits in the subscription (the fetcher creates it before publishing),
    # so the filter is busy from its first batch to the last: a kill cannot miss the work.
    assert await pipeline.sync_once(timeout_s=60) == 0

    # Three kills at random points of the backlog: each restart inherits the previous victim's
    # locked batch, and each kill is another chance to land between two effects.
    points = sorted(rng.sample(range(300, FEED_SIZE - 1500), KILLS))
    for n, point in enumerate(points):
        victim = await pipeline.start_service("filter", label=f"filter-killed-{n}")
        await wait_for(partial(received_at_least, pipeline, point), 30, what=f"{point} received")
        await asyncio.sleep(rng.uniform(0.0, 0.1))  # anywhere inside a batch, not at its end
        await kill(pipeline, victim)
        depth, in_flight, _ = (await queue_counts(pipeline))["subscription"]
        assert depth + in_flight > 0, "the filter had nothing left when it died"

    await pipeline.start_service("filter", label="filter-restarted")
    await pipeline.wait_drained(timeout_s=60, settle_s=0.5)
    expected = pipeline.expected()
    print("counters", await pipeline.counters(), "uploads", upload_histogram(pipeline, expected))
    assert_delivered(pipeline, expected, max_uploads=2)


@pytest.mark.timeout(120)
async def test_uploader_killed_while_busy_loses_nothing(make_pipeline: PipelineFactory) -> None:
    rng = random.Random(3)
    pipeline = await backfill(make_pipeline, seed=23, **SLOW_UPLOADS)
    await pipeline.start_service("filter")
    victim = await pipeline.start_service("uploader", label="uploader-killed-0")
    sync = start_sync(pipeline, "sync")

    for n, point in enumerate(sorted(rng.sample(range(300, FEED_SIZE - 1500), KILLS))):
        if n:
            victim = await pipeline.start_service("uploader", label=f"uploader-killed-{n}")
        await wait_for(partial(stored_at_least, pipeline, point), 30, what=f"{point} uploads")
        await asyncio.sleep(rng.uniform(0.0, 0.3))  # anywhere inside a request's round
        await kill(pipeline, victim)
        depth, in_flight, _ = (await queue_counts(pipeline))["upload"]
        assert depth + in_flight > 0, "the uploader had nothing left when it died"

    await pipeline.start_service("uploader", label="uploader-restarted")
    await finish(pipeline, sync)
    expected = pipeline.expected()
    print("counters", await pipeline.counters(), "uploads", upload_histogram(pipeline, expected))
    assert_delivered(pipeline, expected, max_uploads=2)
    assert upload_histogram(pipeline, expected).keys() <= {1, 2}


@pytest.mark.timeout(120)
async def test_redis_killed_mid_backfill_loses_nothing_and_no_service_exits(
    make_pipeline: PipelineFactory,
) -> None:
    pipeline = await backfill(make_pipeline, seed=24, FILTER_BATCH_SIZE="100", **SLOW_UPLOADS)
    pipeline.sims.mati.page_latency_s = 0.3
    filter_ = await pipeline.start_service("filter")
    uploader = await pipeline.start_service("uploader")
    sync = start_sync(pipeline, "sync")
    store = pipeline.sims.sentinel.store
    await wait_for(lambda: len(store) >= 300, 30, what="the first uploads")

    marks = {label: len(log_events(pipeline, label)) for label in ("filter", "uploader")}
    await asyncio.to_thread(pipeline.redis_server.kill)

    def noticed(label: str) -> bool:
        """The service logged a warning or error since Redis went away."""
        return any(
            event.get("level") in ("warning", "error")
            for event in log_events(pipeline, label)[marks[label] :]
        )

    # Down until both services noticed and backed off; neither may exit meanwhile.
    await wait_for(
        lambda: noticed("filter") and noticed("uploader"), 20, what="both services noticing"
    )
    assert filter_.running, "the filter exited while Redis was down"
    assert uploader.running, "the uploader exited while Redis was down"
    await asyncio.to_thread(pipeline.redis_server.start)
    assert pipeline.redis is not None
    await wait_for(pipeline.redis.ping, 10, what="the observer reconnected")

    if await sync != 0:
        # The sync died with Redis (outcome failed, exit 1): the next one resumes from the
        # checkpoint. Its lease could not be released while Redis was down.
        await release_fetcher_lease(pipeline)
        assert await pipeline.sync_once(timeout_s=60) == 0
    await pipeline.wait_drained(timeout_s=60, settle_s=0.5)
    assert filter_.running, "the filter exited after the Redis restart"
    assert uploader.running, "the uploader exited after the Redis restart"
    for label in ("filter", "uploader"):
        crashed = [e for e in log_events(pipeline, label) if e.get("event") == "service.crashed"]
        assert not crashed, crashed

    expected = pipeline.expected()
    print("counters", await pipeline.counters(), "uploads", upload_histogram(pipeline, expected))
    assert_delivered(pipeline, expected, max_uploads=2)


@pytest.mark.timeout(120)
async def test_sigterm_mid_work_drains_within_timeout_and_loses_nothing(
    make_pipeline: PipelineFactory,
) -> None:
    pipeline = await backfill(
        make_pipeline, seed=25, FILTER_BATCH_SIZE="25", DRAIN_TIMEOUT_SECONDS="8", **SLOW_UPLOADS
    )
    pipeline.sims.mati.page_latency_s = 0.4
    drain_timeout = pipeline.settings.drain_timeout_seconds
    fetcher = await pipeline.start_service("fetcher")
    filter_ = await pipeline.start_service("filter")
    uploader = await pipeline.start_service("uploader")
    store = pipeline.sims.sentinel.store

    async def all_busy() -> bool:
        counts = await queue_counts(pipeline)
        feed, _ = await pipeline.counters()
        return (
            0 < feed.get("fetched", 0) < FEED_SIZE
            and sum(counts["subscription"][:2]) > 0
            and sum(counts["upload"][:2]) > 0
            and len(store) > 0
        )

    await wait_for(all_busy, 30, what="all three services busy", interval=0.01)
    assert pipeline.processes is not None
    processes = pipeline.processes
    codes = await asyncio.gather(
        *(processes.stop(child, grace_s=drain_timeout) for child in (fetcher, filter_, uploader))
    )
    assert codes == [0, 0, 0], "a service did not stop cleanly within the drain timeout"
    feed, _ = await pipeline.counters()
    assert feed.get("sync_stopped") == 1, feed
    assert len(store) < FEED_SIZE

    await pipeline.start_service("filter", label="filter-2")
    await pipeline.start_service("uploader", label="uploader-2")
    assert await pipeline.sync_once(timeout_s=60) == 0
    await pipeline.wait_drained(timeout_s=60, settle_s=0.5)
    expected = pipeline.expected()
    # A clean stop settles what it sent: nothing is uploaded twice.
    assert_delivered(pipeline, expected, max_uploads=1)
