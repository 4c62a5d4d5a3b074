"""Driving the whole product (``harness.pipeline.Pipeline``: Redis, simulators, services as
processes) for the figures that need it, and reading what happened from the simulators."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import PIPELINE_ENV, cpu_seconds, poll_until, vm_hwm_bytes
from harness.pipeline import DESTINATION, Pipeline
from services.cli.supervisor import Child
from services.runtime import tune_gc
from shared.adapters.destination_state import DestinationState
from shared.adapters.mati_paging import IndicatorQuery
from simulators.feed import Feed

#: A simulated Sentinel that never throttles.
NO_QUOTA = 1_000_000_000


@dataclass
class Run:
    """One pipeline with its services started."""

    pipeline: Pipeline
    services: dict[str, Child] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    cpu_start: dict[str, float] = field(default_factory=dict)
    redis_pid: int | None = None

    async def mark_cpu(self) -> None:
        """Start CPU accounting now (``cpu_used`` reports from here)."""
        self.cpu_start = self._cpu()

    def _cpu(self) -> dict[str, float]:
        used = {"bench+simulators": time.process_time()}
        pids = {label: child.process.pid for label, child in self.services.items()}
        if self.redis_pid is not None:
            pids["redis"] = self.redis_pid
        for label, pid in pids.items():
            value = cpu_seconds(pid)
            if value is not None:
                used[label] = value
        return used

    def cpu_used(self) -> dict[str, float]:
        """CPU seconds each process used since ``mark_cpu``: where the time went."""
        now = self._cpu()
        return {k: round(v - self.cpu_start.get(k, 0.0), 2) for k, v in now.items()}

    def sample_rss(self) -> None:
        """Remember the highest ``VmHWM`` seen for each service still running."""
        for label, child in self.services.items():
            if child.running:
                value = vm_hwm_bytes(child.process.pid)
                if value is not None:
                    self.peak_rss[label] = max(self.peak_rss.get(label, 0), value)


@asynccontextmanager
async def pipeline_run(
    *,
    count: int,
    uploaders: int = 1,
    env: Mapping[str, str] | None = None,
    sentinel_requests_per_minute: int = NO_QUOTA,
    sentinel_window_s: float = 60.0,
    fetcher_service: bool = False,
    seed: int = 17,
) -> AsyncIterator[Run]:
    """A pipeline over a feed of ``count`` indicators with the filter and ``uploaders``
    uploader replicas running; with ``fetcher_service`` the fetcher service too (it syncs at
    start), else nothing fetches until the caller runs ``sync --once``."""
    with tempfile.TemporaryDirectory(prefix="m2s-bench-") as directory:
        pipeline = Pipeline(
            Path(directory),
            feed=Feed(seed=seed, count=count, days=29),
            env={**PIPELINE_ENV, **(env or {})},
            sentinel_requests_per_minute=sentinel_requests_per_minute,
            sentinel_window_s=sentinel_window_s,
        )
        await pipeline.start()
        # Built before the clock starts: the real MATI's CPU is not on this machine.
        pipeline.sims.mati.prerender(IndicatorQuery(0, 0).include_params())
        # The simulators share the cores with the pipeline too: collect as the services do,
        # with the feed and the prerendered pages out of every collection.
        tune_gc()
        run = Run(pipeline)
        if pipeline.redis is not None:
            run.redis_pid = int((await pipeline.redis.info("server"))["process_id"])
        try:
            run.services["filter"] = await pipeline.start_service("filter")
            for n in range(uploaders):
                label = "uploader" if uploaders == 1 else f"uploader-{n + 1}"
                run.services[label] = await pipeline.start_service("uploader", label=label)
            if uploaders and pipeline.redis is not None:
                # A running deployment's seen cache is born: the one-off read of an empty
                # workspace at a new deployment's start is not the throughput measured here.
                state = DestinationState(pipeline.redis, DESTINATION)
                await poll_until(state.born, timeout_s=120, interval_s=0.05, what="born")
            if fetcher_service:
                run.services["fetcher"] = await pipeline.start_service("fetcher")
            yield run
        finally:
            await pipeline.stop()


async def stored_at_least(pipeline: Pipeline, n: int, *, timeout_s: float) -> float:
    """Monotonic time at which the simulated workspace first held ``n`` objects."""
    sentinel = pipeline.sims.sentinel
    return await poll_until(
        lambda: len(sentinel.store) >= n, timeout_s=timeout_s, what=f"{n} stored objects"
    )


async def first_page(pipeline: Pipeline, *, timeout_s: float = 60) -> float:
    mati = pipeline.sims.mati
    return await poll_until(
        lambda: mati.pages_served > 0, timeout_s=timeout_s, interval_s=0.005, what="first page"
    )


async def sync_in_background(pipeline: Pipeline, timeout_s: float) -> asyncio.Task[int]:
    task = asyncio.ensure_future(pipeline.sync_once(timeout_s=timeout_s))
    await asyncio.sleep(0)
    return task


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
