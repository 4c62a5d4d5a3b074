"""The uploader as the service runs it: a stop settles or gives back what is in hand, the config
comes from the settings, and the service loop, readiness and ``status`` show a working (or a
held) uploader."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from services.cli.status import collect, render
from services.runtime import Runtime
from services.uploader.config import UploaderConfig
from services.uploader.main import loop
from shared.adapters.destination_state import CircuitState
from shared.adapters.rate_budget import RateBudget
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.sentinel_client import SentinelClient, UploadResult
from shared.core.settings import Service, load_settings
from simulators.faults import FaultKind
from simulators.sentinel import STIX_ROUTE
from tests.helpers import wait_for
from tests.services.uploader_rig import (
    CLIENT_ID,
    CLIENT_SECRET,
    DEST,
    LOCK_S,
    QUEUE,
    SYSTEMIC,
    TENANT,
    WORKSPACE,
    World,
    assert_committed,
    assert_recovered_once,
    assert_stored_once,
)


async def test_a_stop_while_waiting_for_the_budget_gives_the_batch_back(w: World) -> None:
    await w.forward(range(3))
    budget = RateBudget(w.redis, DEST, limit=1, window_s=30.0)
    assert await budget.acquire() == 0.0  # the only slot of the window is taken
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        await asyncio.sleep(seconds)

    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(budget=budget, sleep=sleep).run(stop))

    async def waiting_for_budget() -> bool:
        return bool(naps)  # the only wait on this path is the budget's

    await wait_for(waiting_for_budget, 15)
    assert (await w.bus.counts(QUEUE)).in_flight == 3
    stop.set()
    await task

    assert w.sentinel.request_log == []
    assert (await w.state.counters())["abandoned"] == 3
    other = RedisStreamsBus(w.redis, consumer="someone-else", lock_duration_s=LOCK_S)
    back = await other.receive(QUEUE, max_messages=10, max_wait_s=1.0)
    assert [d.delivery_count for d in back] == [2, 2, 2]


async def test_a_request_in_flight_when_stop_comes_is_settled(w: World) -> None:
    """No simulator fault answers *successfully* but late, so a thin wrapper around the real
    client holds the request until the test has set stop; the request itself is real."""
    items = await w.forward(range(3))
    sent, go = asyncio.Event(), asyncio.Event()

    class Late:
        def __init__(self, real: SentinelClient) -> None:
            self.real = real

        async def upload(self, objects: Sequence[Mapping[str, Any]]) -> UploadResult:
            sent.set()
            await go.wait()
            return await self.real.upload(objects)

    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(wrap=Late).run(stop))
    await asyncio.wait_for(sent.wait(), timeout=10)
    stop.set()
    go.set()
    await task

    assert await w.drained()
    assert_stored_once(w, items)
    await assert_committed(w, items)


@contextlib.asynccontextmanager
async def running_service(w: World) -> AsyncIterator[Runtime]:
    """The uploader service's loop as ``main`` runs it, on settings loaded from the environment
    it would be given; stopped (and awaited) on leaving."""
    environ = {
        "REDIS_URL": w.redis_server.url,
        "DESTINATION": DEST,
        "AZURE_AUTHORITY_HOST": w.entra.url,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_CLIENT_SECRET": CLIENT_SECRET,
        "AZURE_WORKSPACE_ID": WORKSPACE,
        "SENTINEL_BASE_URL": w.sentinel.url,
        "SENTINEL_RATE_WINDOW_SECONDS": "2",
        "UPLOAD_LINGER_SECONDS": "0.05",
    }
    runtime = Runtime(
        settings=load_settings(environ, Service.UPLOADER),
        service=Service.UPLOADER,
        consumer="uploader-main",
        redis=w.redis,
        bus=RedisStreamsBus(w.redis, consumer="uploader-main", lock_duration_s=LOCK_S),
        stop=asyncio.Event(),
        http=w.session,
    )
    task = asyncio.create_task(loop(runtime))
    try:
        yield runtime
    finally:
        runtime.stop.set()
        await task


def test_the_config_takes_the_settings_once_and_checks_what_the_code_chooses() -> None:
    environ = {
        "DESTINATION": DEST,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_CLIENT_SECRET": CLIENT_SECRET,
        "AZURE_WORKSPACE_ID": WORKSPACE,
        "VALIDITY_REFRESH_RATIO": "0.25",
        "UPLOAD_LINGER_SECONDS": "0.5",
        "BUS_LOCK_DURATION_SECONDS": "30",
        "DRAIN_TIMEOUT_SECONDS": "10",
        "ENABLE_DEDUPLICATION": "false",
    }
    config = UploaderConfig.from_settings(load_settings(environ, Service.UPLOADER), lanes=2)

    assert config == UploaderConfig(
        destination=DEST,
        refresh_ratio=0.25,
        linger_s=0.5,
        lock_duration_s=30.0,
        drain_timeout_s=10.0,
        skip_uploaded=False,
        lanes=2,
    )
    assert config.slice_s == 10.0
    for bad in ({"batch_size": 0}, {"batch_size": 101}, {"lanes": 0}, {"systemic_after": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            replace(config, **bad)


async def test_the_service_loop_wires_settings_to_a_working_uploader(w: World) -> None:
    items = await w.forward(range(5))
    async with running_service(w):
        await wait_for(w.drained, 15)

    assert_stored_once(w, items)
    await assert_committed(w, items)


async def test_a_systemic_refusal_shows_in_readiness_and_status_until_a_probe_is_accepted(
    w: World,
) -> None:
    """The service as it runs (settings, the readiness check, the default probe back-off of
    5 s): while Sentinel refuses everything for one reason, /readyz says why and so does
    ``mati2sentinel status``; the probe after the fault is gone closes the circuit."""
    items = await w.forward(range(5))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=3)
    async with running_service(w) as runtime:

        async def opened() -> bool:
            return (await w.state.circuit())[0] is CircuitState.OPEN

        await wait_for(opened, 15)
        why = SYSTEMIC
        assert (await runtime.health.ready())["circuit"] == f"not_ready: circuit open: {why}"
        shown = await collect(runtime)
        assert (shown.circuit, shown.circuit_reason) == ("open", why)
        assert f"circuit      open ({why})" in render(shown)
        upload = next(e for e in shown.entities if e.entity == QUEUE.name)
        assert (upload.in_flight, upload.dead_letter) == (5, 0)

        # The fault was for three requests: the first probe is accepted.
        await wait_for(w.drained, 15)
        assert (await runtime.health.ready())["circuit"] == "ok"

    assert w.statuses() == [400, 400, 400, 200]
    await assert_recovered_once(w, items)
