"""The gauges of shared.telemetry.metrics: what is true *now*, read from Redis and the bus.

OpenTelemetry calls a gauge's callback synchronously at each collection (a scrape, an OTLP
export), but the values live behind async calls. So ``GaugeCache`` reads them in the event
loop (a refresher task every ``REFRESH_S``, and again on each scrape) and the callbacks return
the cache. A part whose reads keep failing drops out after ``STALE_AFTER_S``: an absent series
an alert can see beats an old value passing for a current one.

Each service reports only what it owns (``PARTS``): the filter the subscription it reads, the
uploader its queue, circuit and rate budget, the fetcher the checkpoint and last sync. So a
series is never reported by every replica of every service, except what each pod knows of
itself: its readiness checks (``readiness_read``) and the Redis it writes to (whether its
policy evicts, how full it is), added by ``services.runtime``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from opentelemetry.metrics import Observation

from shared.contract.bus import Bus, Source, Subscription
from shared.telemetry import logs
from shared.telemetry.health import Health

log = logs.get_logger(__name__)

#: How often the gauges are read in the background (OTLP exports between scrapes need them).
REFRESH_S: Final = 5.0
#: One gauge read (one Redis or bus call) may take this long.
READ_TIMEOUT_S: Final = 3.0
#: A part not read successfully for this long disappears from the export.
STALE_AFTER_S: Final = 3 * REFRESH_S


@dataclass(frozen=True, slots=True)
class Gauge:
    name: str
    description: str
    unit: str = "1"


GAUGES: Final = (
    Gauge("mati2sentinel_queue_depth", "Messages waiting, not locked by anyone."),
    Gauge("mati2sentinel_queue_in_flight", "Messages locked by a receiver."),
    Gauge("mati2sentinel_queue_dead_letters", "Messages in the dead-letter queue."),
    Gauge(
        "mati2sentinel_queue_oldest_message_age_seconds",
        "Age of the oldest unsettled message (0: none).",
        "s",
    ),
    Gauge(
        "mati2sentinel_checkpoint_age_seconds",
        "Now minus the checkpoint's last_updated: how far behind MATI the feed is.",
        "s",
    ),
    Gauge("mati2sentinel_checkpoint_saved_age_seconds", "Seconds since the checkpoint moved.", "s"),
    Gauge("mati2sentinel_last_sync_age_seconds", "Seconds since the last sync finished.", "s"),
    Gauge("mati2sentinel_last_sync_completed", "1 if the last sync completed, else 0."),
    Gauge("mati2sentinel_circuit_state", "Upload circuit: 0 closed, 1 half-open, 2 open."),
    Gauge("mati2sentinel_rate_budget_requests", "Upload requests granted within the window."),
    Gauge("mati2sentinel_rate_budget_limit", "Upload requests allowed per window."),
    Gauge("mati2sentinel_rate_budget_used_ratio", "Granted requests over the limit."),
    Gauge("mati2sentinel_rate_budget_pause_seconds", "Seconds the shared 429 pause lasts.", "s"),
    Gauge("mati2sentinel_reconcile_objects", "Lineages per kind in the last reconcile."),
    Gauge(
        "mati2sentinel_reconcile_drift_streak",
        "Reconciles in a row that found drift (0 after a clean one).",
    ),
    Gauge("mati2sentinel_reconcile_age_seconds", "Seconds since the last reconcile finished.", "s"),
    Gauge("mati2sentinel_ready", "1 while this readiness check passes (/readyz), else 0."),
    Gauge(
        "mati2sentinel_destination_fed",
        "1 for each destination the fetcher feeds (its subscription made before each sync).",
    ),
    Gauge(
        "mati2sentinel_redis_evicting",
        "1 if Redis's maxmemory-policy drops keys at maxmemory, 0 if it refuses writes.",
    ),
    Gauge("mati2sentinel_redis_memory_used_ratio", "Redis used_memory over maxmemory."),
)

#: ``(gauge name, value, attributes)``.
Reading: TypeAlias = tuple[str, float, dict[str, str]]
Read: TypeAlias = Callable[[], Awaitable[list[Reading]]]


class GaugeCache:
    """The latest readings of each part, refreshed by ``refresh`` (async, in the event loop)
    and read by the instruments' callbacks (sync, maybe on the OTLP exporter's thread)."""

    def __init__(
        self,
        reads: Mapping[str, Read],
        *,
        stale_after_s: float = STALE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._reads = dict(reads)
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._failure_listeners = [on_failure] if on_failure is not None else []
        # Replaced whole, never mutated: a callback on another thread sees one version.
        self._taken: dict[str, tuple[float, list[Reading]]] = {}
        self._failing: set[str] = set()
        self._lock = asyncio.Lock()
        self.refreshed_at: float | None = None

    def add(self, part: str, read: Read) -> None:
        """Read ``part`` too, from the next refresh on: what every service reports whatever
        it is (readiness, Redis's memory) is added where the service is assembled."""
        self._reads = {**self._reads, part: read}

    def on_failure(self, listener: Callable[[str], None]) -> None:
        """Also tell ``listener`` the name of each part whose read failed."""
        self._failure_listeners.append(listener)

    @property
    def parts(self) -> list[str]:
        return sorted(self._reads)

    async def refresh(self, *, if_older_than_s: float = 0.0) -> None:
        """Read every part again (concurrently); a part that fails keeps its last readings
        until they go stale."""
        async with self._lock:
            if (
                self.refreshed_at is not None
                and self._clock() - self.refreshed_at < if_older_than_s
            ):
                return
            parts = list(self._reads)
            results = await asyncio.gather(*(self._read(part) for part in parts))
            now = self._clock()
            fresh = {
                part: (now, r) for part, r in zip(parts, results, strict=True) if r is not None
            }
            self._taken = {**self._taken, **fresh}
            self.refreshed_at = now

    async def _read(self, part: str) -> list[Reading] | None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                readings = await self._reads[part]()
        except Exception as exc:  # a gauge that cannot be read must not stop the others
            if part not in self._failing:
                log.warning("metrics.gauge_read_failed", part=part, error=type(exc).__name__)
            self._failing.add(part)
            for listener in self._failure_listeners:
                listener(part)
            return None
        if part in self._failing:
            self._failing.discard(part)
            log.info("metrics.gauge_read_recovered", part=part)
        return readings

    def observe(self, gauge: str) -> list[Observation]:
        now = self._clock()
        return [
            Observation(value, attributes)
            for taken_at, readings in list(self._taken.values())
            if now - taken_at <= self._stale_after_s
            for name, value, attributes in readings
            if name == gauge
        ]

    async def run(self, interval_s: float = REFRESH_S) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)


def entity_name(source: Source) -> str:
    """``indicators/<destination>`` or ``upload.<destination>``, as ``status`` shows them."""
    return f"{source.topic}/{source.name}" if isinstance(source, Subscription) else source.name


def queue_read(bus: Bus, source: Source, destination: str) -> Read:
    attributes = {"destination": destination, "queue": entity_name(source)}

    async def read() -> list[Reading]:
        counts = await bus.counts(source)
        return [
            ("mati2sentinel_queue_depth", counts.depth, attributes),
            ("mati2sentinel_queue_in_flight", counts.in_flight, attributes),
            ("mati2sentinel_queue_dead_letters", counts.dead_letter, attributes),
            (
                "mati2sentinel_queue_oldest_message_age_seconds",
                counts.oldest_age_s or 0.0,
                attributes,
            ),
        ]

    return read


def readiness_read(health: Health, destination: str) -> Read:
    """``/readyz`` as a gauge, one series per check: a probe only restarts or unlists a pod,
    while an alert needs a series to say that Redis refuses writes (say) for minutes.

    All but the bus's check: on Service Bus it peeks through the links the service receives
    and settles on, and run at every gauge read (not every ten seconds, as the kubelet's
    probe does) it broke those links under load. A bus that does not answer already shows:
    its queue gauges go missing, with a ``metrics.gauge_read_failed`` warning."""

    async def read() -> list[Reading]:
        checks = await health.ready(skip=("bus",))
        return [
            (
                "mati2sentinel_ready",
                1.0 if result == "ok" else 0.0,
                {"destination": destination, "check": name},
            )
            for name, result in checks.items()
        ]

    return read
