"""/readyz of a running uploader follows what it depends on: false while Redis is down or while
Sentinel refuses the credentials (the circuit is open), true again once they are back."""

from __future__ import annotations

import aiohttp
import pytest

from harness.pipeline import DESTINATION
from shared.adapters.destination_state import CircuitState, DestinationState
from simulators.feed import Feed
from tests.e2e.pipeline_tools import PipelineFactory, log_events
from tests.helpers import wait_for


async def readyz(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, object]]:
    try:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status, await response.json()
    except aiohttp.ClientError:
        return 0, {}


@pytest.mark.timeout(120)
async def test_readyz_follows_redis_and_the_circuit(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline(feed=Feed(seed=4, count=300, days=29))
    await pipeline.start_service("filter")
    await pipeline.start_service("uploader")

    def started() -> int | None:
        for event in log_events(pipeline, "uploader"):
            if event.get("event") == "service.started":
                return int(event["health_port"])
        return None

    port = await wait_for(started, 20, what="the uploader to start")
    async with aiohttp.ClientSession() as http:

        async def status_is(expected: int) -> dict[str, object] | None:
            status, body = await readyz(http, port)
            return body if status == expected else None

        await wait_for(lambda: status_is(200), 20, what="ready")

        # Redis stops: not ready; back: ready.
        await pipeline.redis_server_stop()
        body = await wait_for(lambda: status_is(503), 20, what="not ready without Redis")
        assert body["checks"]["redis"] != "ok"  # type: ignore[index]
        await pipeline.redis_server_start()
        await wait_for(lambda: status_is(200), 30, what="ready with Redis back")

        # Sentinel refuses the credentials: the circuit opens, not ready; fixed: ready again.
        creds = pipeline.sims.credentials
        pipeline.sims.entra.add_client(creds.client_id, "not-the-configured-secret")
        assert await pipeline.sync_once() == 0

        async def circuit_open() -> dict[str, object] | None:
            status, body = await readyz(http, port)
            checks = body.get("checks", {})
            circuit = str(checks.get("circuit", "")) if isinstance(checks, dict) else ""
            return body if status == 503 and circuit.startswith("not_ready: circuit open") else None

        await wait_for(circuit_open, 30, what="not ready with the circuit open")
        assert pipeline.redis is not None
        circuit, _, _ = await DestinationState(pipeline.redis, DESTINATION).circuit()
        assert circuit is CircuitState.OPEN
        pipeline.sims.entra.add_client(creds.client_id, creds.client_secret)
        await wait_for(lambda: status_is(200), 60, what="ready once the circuit closed")
        await pipeline.wait_drained(timeout_s=30)
        assert set(pipeline.sims.sentinel.store) == set(pipeline.expected().objects)
