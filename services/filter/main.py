"""The filter's composition root: settings and connections in, ``FilterWorker.run`` out.

It holds no logic of its own beyond wiring, so the tests drive ``FilterWorker`` directly with
the same real parts this builds.
"""

from __future__ import annotations

import random

from services.filter.worker import UNAVAILABLE_BACKOFF, FilterWorker, wait_or_stop
from services.runtime import Runtime, lanes_for, run_service
from shared.adapters.state import DestinationState
from shared.contract.messages import subscription, upload_queue
from shared.core.errors import TransientError
from shared.core.settings import Service
from shared.telemetry.logs import get_logger

log = get_logger(__name__)
_JITTER = random.Random()  # noqa: S311 - back-off jitter, not a secret


def build_worker(runtime: Runtime) -> FilterWorker:
    settings = runtime.settings
    return FilterWorker(
        bus=runtime.bus,
        state=DestinationState(runtime.redis, settings.destination),
        filter_policy=settings.filter_policy(),
        stix_policy=settings.stix_policy(),
        destination=settings.destination,
        deduplication=settings.enable_deduplication,
        refresh_ratio=settings.validity_refresh_ratio,
        batch_size=settings.filter_batch_size,
        lanes=lanes_for(runtime.bus),
    )


async def ensure_entities(runtime: Runtime) -> bool:
    """Create the subscription (so nothing the fetcher publishes from now on is dropped by a
    topic without subscribers) and the upload queue; retried while the bus is unavailable, so
    a pod that starts before Redis does waits instead of crash-looping. False if stopped."""
    destination = runtime.settings.destination
    failures = 0
    while not runtime.stop.is_set():
        try:
            await runtime.bus.ensure(subscription(destination))
            await runtime.bus.ensure(upload_queue(destination))
        except TransientError as exc:
            failures += 1
            wait = UNAVAILABLE_BACKOFF.jittered(failures, _JITTER)
            log.warning("filter.ensure_failed", error=str(exc)[:200], retry_in_s=round(wait, 3))
            await wait_or_stop(runtime.stop, wait)
        else:
            return True
    return False


async def loop(runtime: Runtime) -> None:
    worker = build_worker(runtime)
    if await ensure_entities(runtime):
        await worker.run(runtime.stop)


def main() -> int:
    return run_service(Service.FILTER, loop, http=False)
