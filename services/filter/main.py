"""The filter's composition root: settings and connections in, ``FilterWorker.run`` out.

It holds no logic of its own beyond wiring, so the tests drive ``FilterWorker`` directly with
the same real parts this builds.
"""

from __future__ import annotations

import random

from services.filter.config import UNAVAILABLE_BACKOFF, FilterConfig
from services.filter.worker import FilterWorker
from services.runtime import Runtime, lanes_for, run_service
from shared.adapters.destination_state import DestinationState
from shared.contract.messages import revocation_queue, subscription, upload_queue
from shared.core.errors import TransientError
from shared.core.events import get_logger
from shared.core.retrying import Retrier, Stopped, retry
from shared.core.settings import Service

log = get_logger(__name__)
_JITTER = random.Random()  # noqa: S311 - back-off jitter, not a secret


def build_worker(runtime: Runtime) -> FilterWorker:
    settings = runtime.settings
    return FilterWorker(
        FilterConfig.from_settings(settings, lanes=lanes_for(runtime.bus)),
        bus=runtime.bus,
        state=DestinationState(runtime.redis, settings.destination),
    )


async def ensure_entities(runtime: Runtime) -> bool:
    """Create the subscription (so nothing the fetcher publishes from now on is dropped by a
    topic without subscribers), the upload queue and its priority lane; retried while the bus
    is unavailable, so a pod that starts before Redis does waits instead of crash-looping.
    False if stopped."""
    destination = runtime.settings.destination

    async def ensure() -> None:
        await runtime.bus.ensure(subscription(destination))
        await runtime.bus.ensure(upload_queue(destination))
        await runtime.bus.ensure(revocation_queue(destination))

    def failed(exc: BaseException, wait: float) -> None:
        log.warning("filter.ensure_failed", error=str(exc)[:200], retry_in_s=round(wait, 3))

    if runtime.stop.is_set():
        return False
    retrier = Retrier(UNAVAILABLE_BACKOFF, _JITTER, bounded=False)
    try:
        await retry(ensure, on=TransientError, retrier=retrier, stop=runtime.stop, on_retry=failed)
    except Stopped:
        return False
    return True


async def loop(runtime: Runtime) -> None:
    worker = build_worker(runtime)
    if await ensure_entities(runtime):
        await worker.run(runtime.stop)


def main(destination: str | None = None) -> int:
    """``destination``: ``--destination``; else ``DESTINATION``."""
    return run_service(Service.FILTER, loop, http=False, destination=destination)
