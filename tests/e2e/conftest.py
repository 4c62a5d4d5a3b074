"""End-to-end fixtures: the whole product against the simulators, with real Redis and the
services as real child processes (``harness.pipeline.Pipeline``).

These tests prove the delivery guarantees of DESIGN §2-§4 from the outside: what the
simulated workspace holds is compared with what it must hold (``Pipeline.expected``), key by
key and fingerprint by fingerprint, after crashes, throttling, rejections and bad input.

Every wait is a poll with a deadline (``wait_for``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest
from redis.exceptions import RedisError

from harness.pipeline import DESTINATION, Expected, Pipeline, mati_properties
from shared.adapters.feed_state import FetcherLease
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.servicebus import REPLAY_TO
from shared.contract.messages import INDICATORS, subscription, upload_queue
from simulators.feed import Feed
from simulators.sentinel import ObjectStore
from tests.commands import CliResult, run_command
from tests.servicebus_peer import FakeServiceBus, ReplayRule

#: What every end-to-end pipeline runs with: locks short enough that a killed holder's
#: messages come back within seconds, and a quick linger so small feeds drain fast.
BASE_ENV: Mapping[str, str] = {
    "BUS_LOCK_DURATION_SECONDS": "3",
    "UPLOAD_LINGER_SECONDS": "0.2",
    "DRAIN_TIMEOUT_SECONDS": "10",
}
#: Filters that let every record through, so a feed of N indicators is N uploads: the crash
#: tests need volume in every queue, not a realistic funnel.
ACCEPT_ALL: Mapping[str, str] = {
    "MINIMUM_CONFIDENCE": "0",
    "MINIMUM_THREAT_SCORE": "0",
    "EXCLUDE_OSINT": "false",
}


# ---- polling -------------------------------------------------------------------------------


Predicate = Callable[[], Any]


async def wait_for(
    predicate: Predicate,
    timeout_s: float,
    *,
    what: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    A Redis error counts as "not yet" (the tests that restart Redis poll through the outage);
    on timeout, ``AssertionError`` names ``what`` and the last value or error seen.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except (RedisError, OSError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


# ---- the pipeline --------------------------------------------------------------------------


class PipelineFactory(Protocol):
    def __call__(
        self,
        *,
        feed: Feed,
        env: Mapping[str, str] | None = None,
        sentinel_requests_per_minute: int = 100,
        sentinel_window_s: float = 60.0,
    ) -> Awaitable[Pipeline]: ...


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item, so a fixture can tell the test failed."""
    report = yield
    setattr(item, f"e2e_report_{report.when}", report)
    return report


@pytest.fixture
async def make_pipeline(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[PipelineFactory]:
    """Start a ``Pipeline`` in ``tmp_path`` (``BASE_ENV`` under the given ``env``); every one
    started is stopped at teardown, and a failed test prints the tail of every service log."""
    started: list[Pipeline] = []

    async def factory(
        *,
        feed: Feed,
        env: Mapping[str, str] | None = None,
        sentinel_requests_per_minute: int = 100,
        sentinel_window_s: float = 60.0,
    ) -> Pipeline:
        pipeline = Pipeline(
            tmp_path / f"pipeline-{len(started)}",
            feed=feed,
            env={**BASE_ENV, **(env or {})},
            sentinel_requests_per_minute=sentinel_requests_per_minute,
            sentinel_window_s=sentinel_window_s,
        )
        started.append(pipeline)
        await pipeline.start()
        return pipeline

    yield factory
    report = getattr(request.node, "e2e_report_call", None)
    for pipeline in started:
        if report is not None and report.failed:
            print_logs(pipeline)
        await pipeline.stop()


def print_logs(pipeline: Pipeline, lines: int = 40) -> None:
    for path in sorted((pipeline.state_dir / "logs").glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"---- {path.name} (last {len(tail)} lines)", *tail, sep="\n")


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


@pytest.fixture(params=["redis", "servicebus"])
def bus_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The same pipeline on the embedded bus, and on Service Bus through the real SDK against
    the fake AMQP peer, with the entities an operator creates (docs/servicebus.md)."""
    if request.param == "redis":
        yield {"BUS": "redis"}
        return
    with FakeServiceBus() as namespace:
        namespace.create_topic(INDICATORS.name)
        namespace.create_subscription(
            INDICATORS.name, DESTINATION, rule=ReplayRule(REPLAY_TO, DESTINATION)
        )
        namespace.create_queue(upload_queue(DESTINATION).name)
        yield {"BUS": "servicebus", "SERVICEBUS_CONNECTION_STRING": namespace.connection_string}
        assert namespace.failure is None, f"the fake Service Bus failed: {namespace.failure!r}"
