"""Probes: /livez from the event loop's beats, /readyz from named checks with a timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from shared.core.errors import NotReady
from shared.telemetry.health import Health, HealthServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def get(server: HealthServer, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.port}{path}") as response,
    ):
        return response.status, await response.json()


async def test_livez_turns_false_when_beats_stop() -> None:
    clock = Clock()
    health = Health(stale_after_s=30, clock=clock)
    async with HealthServer(health, host="127.0.0.1", port=0) as server:
        assert (await get(server, "/livez"))[0] == 200
        clock.now += 31
        status, body = await get(server, "/livez")
        assert (status, body["alive"]) == (503, False)
        health.beat()
        assert (await get(server, "/livez"))[0] == 200


async def test_readyz_names_what_fails_without_its_message() -> None:
    health = Health()

    async def fine() -> None:
        return None

    async def broken() -> None:
        raise ConnectionError("secret-host.internal:6380 refused")

    async def hung() -> None:
        await asyncio.sleep(60)

    async def circuit() -> None:
        raise NotReady("circuit open: AuthenticationFailed")

    health.add_check("fine", fine)
    async with HealthServer(health, host="127.0.0.1", port=0) as server:
        assert await get(server, "/readyz") == (200, {"ready": True, "checks": {"fine": "ok"}})
        health.add_check("redis", broken)
        health.add_check("bus", hung)
        health.add_check("circuit", circuit)
        status, body = await get(server, "/readyz")
        assert status == 503
        assert body["checks"] == {
            "fine": "ok",
            "redis": "ConnectionError",
            "bus": "timeout",
            "circuit": "not_ready: circuit open: AuthenticationFailed",
        }
        assert "secret-host" not in str(body)


async def test_readyz_follows_redis_down_and_back(tmp_path: Path) -> None:
    redis_server = LocalRedis(tmp_path / "redis")
    await asyncio.to_thread(redis_server.start)
    client: Redis = Redis.from_url(redis_server.url, socket_timeout=1)
    health = Health()

    async def redis_answers() -> None:
        await client.ping()

    health.add_check("redis", redis_answers)
    try:
        async with HealthServer(health, host="127.0.0.1", port=0) as server:
            assert (await get(server, "/readyz"))[0] == 200
            await asyncio.to_thread(redis_server.stop)
            status, body = await get(server, "/readyz")
            assert status == 503
            assert body["checks"]["redis"] != "ok"
            await asyncio.to_thread(redis_server.start)
            assert (await get(server, "/readyz"))[0] == 200
    finally:
        await client.aclose()
        await asyncio.to_thread(redis_server.stop)
