"""``/livez`` and ``/readyz`` for Kubernetes probes, on a small aiohttp server per service.

- ``/livez``: the service loop is alive. The loop calls ``Health.beat()`` every turn; a beat
  older than ``stale_after_s`` means it is stuck, and the kubelet should restart the pod.
- ``/readyz``: the service can do its work now: every registered check passes (Redis answers,
  the bus answers, the uploader's circuit is closed). A failing check answers 503 with the names
  and error classes of what failed, never their messages (they could carry hosts or worse).

Checks run with a short timeout each, concurrently, so a probe never hangs on a dead peer.

- ``/metrics``: the service's metrics in the Prometheus text format (shared.telemetry.metrics), on
  the same port as the probes, so the one port the chart exposes is the one Prometheus or KEDA
  scrapes; 404 until metrics are attached with ``Health.serve_metrics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Final, Self

import orjson
from aiohttp import web

from shared.core.errors import NotReady

Check = Callable[[], Awaitable[None]]
#: Renders the metrics for one scrape: ``(body, content type)``.
Scrape = Callable[[], Awaitable[tuple[bytes, str]]]

CHECK_TIMEOUT_S: Final = 2.0


class Health:
    """Liveness from loop beats, readiness from named checks; served by ``HealthServer``."""

    def __init__(
        self, *, stale_after_s: float = 120.0, clock: Callable[[], float] = time.monotonic
    ):
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._last_beat = clock()
        self._checks: dict[str, Check] = {}
        self.scrape: Scrape | None = None

    def serve_metrics(self, scrape: Scrape | None) -> None:
        """What ``/metrics`` answers with (``None``: 404 again)."""
        self.scrape = scrape

    def beat(self) -> None:
        self._last_beat = self._clock()

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def alive(self) -> tuple[bool, float]:
        age = self._clock() - self._last_beat
        return age <= self._stale_after_s, age

    async def ready(self, *, skip: Collection[str] = ()) -> dict[str, str]:
        """Name -> "ok" or the error class that made the check fail (but those in ``skip``)."""
        names = [name for name in self._checks if name not in skip]
        results = await asyncio.gather(
            *(self._run(self._checks[name]) for name in names), return_exceptions=False
        )
        return dict(zip(names, results, strict=True))

    @staticmethod
    async def _run(check: Check) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await check()
        except TimeoutError:
            return "timeout"
        except NotReady as exc:
            return f"not_ready: {exc}"
        except Exception as exc:  # a probe reports every failure; it must never raise
            return type(exc).__name__
        return "ok"


class HealthServer:
    """The probe endpoints on ``host:port`` (port 0 picks a free one, for tests)."""

    def __init__(self, health: Health, *, host: str = "0.0.0.0", port: int = 8080) -> None:  # noqa: S104 - probes come from the kubelet
        self.health = health
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_get("/livez", self._livez)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("health server is not started")
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _livez(self, request: web.Request) -> web.Response:
        alive, age = self.health.alive()
        body = {"alive": alive, "last_beat_s": round(age, 3)}
        return _json(body, 200 if alive else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self.health.ready()
        ready = all(result == "ok" for result in checks.values())
        return _json({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        scrape = self.health.scrape
        if scrape is None:
            return web.Response(status=404, text="no metrics in this process\n")
        body, content_type = await scrape()
        return web.Response(body=body, headers={"Content-Type": content_type})


def _json(body: object, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
