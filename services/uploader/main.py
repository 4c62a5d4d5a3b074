"""The uploader's composition root: settings and connections in, one ``Uploader`` run.

Nothing here decides anything; it builds the parts the worker takes (DESIGN §10), so the
worker runs the same code against the simulators in tests and against Azure in production.
"""

from __future__ import annotations

import asyncio
from typing import Final

from services.runtime import Runtime, lanes_for, run_service
from services.uploader.config import UploaderConfig
from services.uploader.worker import Uploader
from services.workspace import CacheGuard, open_reader
from shared.adapters.credentials import TokenProvider, credential_factory
from shared.adapters.destination_state import CircuitState, DestinationState
from shared.adapters.rate_budget import RateBudget
from shared.adapters.sentinel_client import SentinelClient
from shared.adapters.workspace_state import WorkspaceState
from shared.core.backoff import Backoff
from shared.core.errors import BusUnavailable, NotReady
from shared.core.retrying import Retrier, Stopped, retry
from shared.core.settings import Service
from shared.telemetry import logs

log = logs.get_logger(__name__)
#: Waiting for the bus at start: a failover takes seconds, a bus that starts after the pod
#: minutes; jittered so that replicas starting together do not ask together.
BUS_BACKOFF: Final = Backoff(base_s=1.0, cap_s=30.0)


async def loop(runtime: Runtime) -> None:
    """Upload until ``runtime.stop`` is set; the token provider is closed on the way out."""
    settings = runtime.settings
    if runtime.http is None:
        raise RuntimeError("the uploader needs the HTTP session (run_service(http=True))")
    factory = credential_factory(
        session=runtime.http,
        tenant_id=settings.azure_tenant_id or "",
        client_id=settings.azure_client_id or "",
        authority_host=settings.azure_authority_host,
        client_secret=settings.azure_client_secret,
        federated_token_file=settings.azure_federated_token_file,
    )
    secret = settings.azure_client_secret
    tokens = TokenProvider(factory, redact=(secret,) if secret else ())
    try:
        client = SentinelClient(
            runtime.http,
            tokens,
            api=settings.sentinel_api,
            base_url=settings.sentinel_base_url,
            workspace_id=settings.azure_workspace_id or "",
            source_system=settings.sentinel_source_system,
        )
        destination = settings.destination
        state = DestinationState(runtime.redis, destination)

        async def circuit_closed() -> None:
            circuit, reason, _ = await state.circuit()
            if circuit is not CircuitState.CLOSED:
                raise NotReady(f"circuit {circuit.value}: {reason}")

        runtime.health.add_check("circuit", circuit_closed)
        uploader = Uploader(
            bus=runtime.bus,
            state=state,
            budget=RateBudget(
                runtime.redis,
                destination,
                limit=settings.sentinel_requests_per_minute,
                window_s=settings.sentinel_rate_window_seconds,
            ),
            client=client,
            config=UploaderConfig.from_settings(settings, lanes=lanes_for(runtime.bus)),
        )
        http = runtime.http
        guard = CacheGuard(
            WorkspaceState(runtime.redis, state),
            lambda: open_reader(settings, http),
            mode=settings.cache_rebuild if settings.enable_deduplication else "off",
        )
        if await _ensure_queue(runtime, uploader):
            async with asyncio.TaskGroup() as work:
                work.create_task(guard.run(runtime.stop))
                work.create_task(uploader.run(runtime.stop))
    finally:
        await tokens.aclose()


async def _ensure_queue(runtime: Runtime, uploader: Uploader) -> bool:
    """Create the upload queue and the priority lane, waiting out a bus that is not up yet;
    False when stopped."""

    def unavailable(exc: BaseException, wait: float) -> None:
        log.warning("upload.bus_unavailable", detail=str(exc), wait_s=round(wait, 3))

    if runtime.stop.is_set():
        return False
    retrier = Retrier(BUS_BACKOFF, bounded=False)

    async def ensure() -> None:
        for queue in (uploader.priority, uploader.queue):
            await runtime.bus.ensure(queue)

    try:
        await retry(
            ensure,
            on=BusUnavailable,
            retrier=retrier,
            stop=runtime.stop,
            on_retry=unavailable,
        )
    except Stopped:
        return False
    return True


def main(destination: str | None = None) -> int:
    """``destination``: ``--destination``; else ``DESTINATION``."""
    return run_service(Service.UPLOADER, loop, http=True, destination=destination)
