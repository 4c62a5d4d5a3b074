"""Telemetry wired to the adapters, for every service: the gauges each one reads from its Redis
state and its bus (``PARTS``), and the observers that mirror Redis's counts and Sentinel's
upload calls into metrics. It lives with the composition root, so that ``shared.telemetry``
never imports an adapter and the adapters never import telemetry.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Final

from shared.adapters.destination_state import CircuitState, DestinationState
from shared.adapters.feed_state import FeedState
from shared.adapters.rate_budget import RateBudget
from shared.adapters.redis_connect import RedisClient
from shared.adapters.sentinel_client import observe_requests
from shared.adapters.state_counters import observe_counts as observe_state_counts
from shared.adapters.workspace_state import WorkspaceState, when
from shared.contract.bus import Bus
from shared.contract.messages import revocation_queue, subscription, upload_queue
from shared.core.drift import Drift
from shared.core.settings import Service, Settings
from shared.core.timing import aware_timestamp
from shared.telemetry.gauges import REFRESH_S, GaugeCache, Read, Reading, queue_read
from shared.telemetry.health import Health
from shared.telemetry.metrics import Metrics, exporter_readers

_CIRCUIT_VALUES: Final = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def feed_read(feed: FeedState, destination: str) -> Read:
    """The checkpoint's ages, and how long ago the last sync finished and whether it
    completed; an age nobody can know yet (no checkpoint, no sync) is left out, not made up."""
    attributes = {"destination": destination}

    async def read() -> list[Reading]:
        checkpoint = await feed.checkpoint()
        last_run = await feed.last_run()
        now = datetime.now(UTC)
        readings: list[Reading] = []
        if checkpoint is not None:
            age = (now - checkpoint.last_updated).total_seconds()
            saved_age = max(0.0, (now - checkpoint.saved_at).total_seconds())
            readings.append(("mati2sentinel_checkpoint_age_seconds", age, attributes))
            readings.append(("mati2sentinel_checkpoint_saved_age_seconds", saved_age, attributes))
        finished = aware_timestamp(last_run.get("finished_at")) if last_run else None
        if last_run is not None and finished is not None:
            completed = 1.0 if last_run.get("outcome") == "completed" else 0.0
            sync_age = max(0.0, (now - finished).total_seconds())
            readings.append(("mati2sentinel_last_sync_age_seconds", sync_age, attributes))
            readings.append(("mati2sentinel_last_sync_completed", completed, attributes))
        return readings

    return read


def circuit_read(state: DestinationState) -> Read:
    attributes = {"destination": state.destination}

    async def read() -> list[Reading]:
        circuit, _, _ = await state.circuit()
        return [("mati2sentinel_circuit_state", _CIRCUIT_VALUES[circuit], attributes)]

    return read


def rate_read(budget: RateBudget, destination: str) -> Read:
    attributes = {"destination": destination}

    async def read() -> list[Reading]:
        used = await budget.in_window()
        paused = await budget.paused_for()
        return [
            ("mati2sentinel_rate_budget_requests", used, attributes),
            ("mati2sentinel_rate_budget_limit", budget.limit, attributes),
            ("mati2sentinel_rate_budget_used_ratio", used / budget.limit, attributes),
            ("mati2sentinel_rate_budget_pause_seconds", paused, attributes),
        ]

    return read


def reconcile_read(workspace: WorkspaceState, clock: Callable[[], float] = time.time) -> Read:
    """The last ``reconcile``'s counts, the drift streak and its age; nothing before the
    first one (an absent series, not a made-up zero)."""
    destination = workspace.state.destination

    async def read() -> list[Reading]:
        done = await workspace.last_reconcile()
        at = when(done.get("at"))
        if at is None:
            return []
        readings: list[Reading] = [
            (
                "mati2sentinel_reconcile_objects",
                _number(done.get(kind.value)),
                {"destination": destination, "kind": kind.value},
            )
            for kind in Drift
        ]
        attributes = {"destination": destination}
        readings.append(
            ("mati2sentinel_reconcile_drift_streak", _number(done.get("streak")), attributes)
        )
        age = max(0.0, clock() - at.timestamp())
        readings.append(("mati2sentinel_reconcile_age_seconds", age, attributes))
        return readings

    return read


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else 0.0
    except ValueError:
        return 0.0


def fed_read(destinations: Sequence[str]) -> Read:
    """The destinations the fetcher feeds, one series each: what an alert joins against, so a
    destination that is fed but whose own services export nothing (they all failed to start)
    is seen, where their silence alone would say nothing."""
    readings: list[Reading] = [
        ("mati2sentinel_destination_fed", 1.0, {"destination": name}) for name in destinations
    ]

    async def read() -> list[Reading]:
        return readings

    return read


#: What each service reports: the entity it consumes, and the state it owns.
PARTS: Final[Mapping[Service, tuple[str, ...]]] = {
    Service.FETCHER: ("feed", "fed"),
    Service.FILTER: ("subscription",),
    Service.UPLOADER: ("upload_queue", "revocation_queue", "circuit", "rate_budget", "reconcile"),
}


def gauge_reads(
    service: Service,
    settings: Settings,
    redis: RedisClient,
    bus: Bus,
    destinations: Sequence[str] = (),
) -> dict[str, Read]:
    """``destinations``: those the process serves (the fetcher: every one it feeds);
    default, ``settings``' own."""
    destination = settings.destination
    every: dict[str, Callable[[], Read]] = {
        "feed": lambda: feed_read(FeedState(redis), destination),
        "fed": lambda: fed_read(destinations or (destination,)),
        "subscription": lambda: queue_read(bus, subscription(destination), destination),
        "upload_queue": lambda: queue_read(bus, upload_queue(destination), destination),
        "revocation_queue": lambda: queue_read(bus, revocation_queue(destination), destination),
        "circuit": lambda: circuit_read(DestinationState(redis, destination)),
        "reconcile": lambda: reconcile_read(
            WorkspaceState(redis, DestinationState(redis, destination))
        ),
        "rate_budget": lambda: rate_read(
            RateBudget(
                redis,
                destination,
                limit=settings.sentinel_requests_per_minute,
                window_s=settings.sentinel_rate_window_seconds,
            ),
            destination,
        ),
    }
    return {part: every[part]() for part in PARTS.get(service, ())}


def configure_metrics(
    service: Service,
    settings: Settings,
    *,
    redis: RedisClient,
    bus: Bus,
    environ: Mapping[str, str] = os.environ,
    destinations: Sequence[str] = (),
) -> Metrics:
    """The metrics of ``service``: instruments, exporters, and the gauges it owns."""
    return Metrics(
        service=service,
        destination=settings.destination,
        gauges=GaugeCache(gauge_reads(service, settings, redis, bus, destinations)),
        readers=exporter_readers(environ),
    )


@asynccontextmanager
async def serving(
    service: Service,
    settings: Settings,
    *,
    redis: RedisClient,
    bus: Bus,
    health: Health,
    environ: Mapping[str, str] = os.environ,
    refresh_s: float = REFRESH_S,
    destinations: Sequence[str] = (),
) -> AsyncIterator[Metrics]:
    """Metrics for the life of a service: counts and upload calls mirrored, gauges refreshed,
    ``/metrics`` on ``health``'s server; on the way out, a last OTLP export."""
    metrics = configure_metrics(
        service, settings, redis=redis, bus=bus, environ=environ, destinations=destinations
    )
    stop_counts = observe_state_counts(metrics.counted)
    stop_requests = observe_requests(metrics.requested)
    health.serve_metrics(metrics.scrape)
    refresher = asyncio.create_task(metrics.gauges.run(refresh_s), name="metrics-refresher")
    try:
        yield metrics
    finally:
        refresher.cancel()
        await asyncio.gather(refresher, return_exceptions=True)
        health.serve_metrics(None)
        stop_requests()
        stop_counts()
        await asyncio.to_thread(metrics.shutdown)
