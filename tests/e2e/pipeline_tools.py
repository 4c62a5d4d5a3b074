"""What the end-to-end tests share besides fixtures: the environment every pipeline runs with,
the type of the ``make_pipeline`` fixture, operator commands run as processes, and what a
pipeline did (queue counts, deliveries checked against ``Pipeline.expected``, service logs).
The fixtures themselves are in conftest.py; polling is ``tests.helpers.wait_for``."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import orjson

from harness.pipeline import DESTINATION, Expected, Pipeline, mati_properties
from shared.adapters.feed_state import FetcherLease
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.messages import subscription, upload_queue
from simulators.feed import Feed
from simulators.sentinel import ObjectStore
from tests.commands import CliResult, run_command
from tests.helpers import wait_for

#: What every end-to-end pipeline runs with: locks short enough that a killed holder's
#: messages come back within seconds, and a quick linger so small feeds drain fast.
BASE_ENV: Mapping[str, str] = {
    "BUS_LOCK_DURATION_SECONDS": "3",
    "UPLOAD_LINGER_SECONDS": "0.2",
    "DRAIN_TIMEOUT_SECONDS": "10",
}


class PipelineFactory(Protocol):
    """What ``make_pipeline`` gives a test: start a pipeline on ``feed``, ``BASE_ENV`` under
    ``env``."""

    def __call__(
        self,
        *,
        feed: Feed,
        env: Mapping[str, str] | None = None,
        sentinel_requests_per_minute: int = 100,
        sentinel_window_s: float = 60.0,
    ) -> Awaitable[Pipeline]: ...


# ---- operator commands as processes ---------------------------------------------------------


async def run_cli(pipeline: Pipeline, *args: str, timeout_s: float = 30.0) -> CliResult:
    """``python -m services.cli args`` with the pipeline's environment, as an operator runs it."""
    result = await run_command(pipeline.env, *args, timeout_s=timeout_s)
    assert result.code == 0, f"cli {' '.join(args)} exited {result.code}: {result.stderr}"
    return result


# ---- what the pipeline did -----------------------------------------------------------------


async def queue_counts(pipeline: Pipeline) -> dict[str, tuple[int, int, int]]:
    """``{"subscription"|"upload": (depth, in_flight, dead_letter)}`` right now."""
    assert pipeline.redis is not None
    bus = RedisStreamsBus(pipeline.redis, consumer="e2e-observer")
    counts = {}
    for name, source in (
        ("subscription", subscription(DESTINATION)),
        ("upload", upload_queue(DESTINATION)),
    ):
        c = await bus.counts(source)
        counts[name] = (c.depth, c.in_flight, c.dead_letter)
    return counts


async def release_fetcher_lease(pipeline: Pipeline) -> None:
    """What the lease's 30 s TTL does after its holder was killed, done now instead of waited
    for: a ``sync --once`` started after a SIGKILL otherwise waits out the dead holder's lease
    (``fetch.waiting_for_lease``), which proves nothing about delivery and costs half a minute."""
    assert pipeline.redis is not None
    await pipeline.redis.delete(FetcherLease(pipeline.redis, owner="e2e").key)


def assert_delivered(pipeline: Pipeline, expected: Expected, *, max_uploads: int) -> None:
    """The workspace holds exactly ``expected`` (ids and fingerprints), each id uploaded at
    least once and at most ``max_uploads`` times."""
    store = pipeline.sims.sentinel.store
    missing = sorted(expected.objects.keys() - store.keys())
    extra = sorted(store.keys() - expected.objects.keys())
    assert not missing, f"{len(missing)} expected objects missing, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} objects nobody expected, e.g. {extra[:3]}"
    stale = sorted(
        k
        for k, fp in expected.objects.items()
        if mati_properties(store[k]).get("fingerprint") != fp
    )
    assert not stale, f"{len(stale)} objects hold other content, e.g. {stale[:3]}"
    uploads = {k: pipeline.sims.sentinel.uploads_for(k) for k in expected.objects}
    too_many = {k: n for k, n in uploads.items() if n > max_uploads}
    assert not too_many, f"{len(too_many)} uploaded more than {max_uploads} times: {too_many}"


async def synced_and_drained(pipeline: Pipeline) -> ObjectStore:
    """Wait for the fetcher's first sync to complete and every queue to drain; the workspace's
    store then."""

    async def synced() -> bool:
        feed, _ = await pipeline.counters()
        return feed.get("sync_completed", 0) >= 1

    await wait_for(synced, 60, what="the fetcher's sync", interval=0.2)
    await pipeline.wait_drained(timeout_s=60)
    return pipeline.sims.sentinel.store


def upload_histogram(pipeline: Pipeline, expected: Expected) -> dict[int, int]:
    """``{times uploaded: how many ids}``, for failure messages and reports."""
    histogram: dict[int, int] = {}
    for key in expected.objects:
        n = pipeline.sims.sentinel.uploads_for(key)
        histogram[n] = histogram.get(n, 0) + 1
    return histogram


def log_events(pipeline: Pipeline, label: str) -> list[dict[str, Any]]:
    """The structured log lines a service (by its label) wrote so far; other lines skipped."""
    path = pipeline.state_dir / "logs" / f"{label}.log"
    if not path.exists():
        return []
    events = []
    for line in path.read_bytes().splitlines():
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
