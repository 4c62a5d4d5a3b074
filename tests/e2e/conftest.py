"""End-to-end fixtures: the whole product against the simulators, with real Redis and the
services as real child processes (``harness.pipeline.Pipeline``).

These tests prove the delivery guarantees of DESIGN §2-§4 from the outside: what the
simulated workspace holds is compared with what it must hold (``Pipeline.expected``), key by
key and fingerprint by fingerprint, after crashes, throttling, rejections and bad input.

Every wait is a poll with a deadline (``tests.helpers.wait_for``); nothing sleeps to
synchronise. What the tests share besides these fixtures is in pipeline_tools.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from pathlib import Path

import pytest

from harness.pipeline import DESTINATION, Pipeline
from shared.adapters.servicebus_messages import REPLAY_TO
from shared.contract.messages import INDICATORS, revocation_queue, upload_queue
from simulators.feed import Feed
from tests.e2e.pipeline_tools import BASE_ENV, PipelineFactory
from tests.servicebus_peer import FakeServiceBus, ReplayRule

# ---- the pipeline --------------------------------------------------------------------------


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
        namespace.create_queue(revocation_queue(DESTINATION).name)
        yield {"BUS": "servicebus", "SERVICEBUS_CONNECTION_STRING": namespace.connection_string}
        assert namespace.failure is None, f"the fake Service Bus failed: {namespace.failure!r}"
