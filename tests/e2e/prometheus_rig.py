"""A real Prometheus for the dashboard test (test_dashboard.py): Debian's ``prometheus`` on a
free loopback port with a temporary configuration and storage, scraping the service
processes every ``SCRAPE_S`` and loading the alert rules; queried as Grafana queries it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from services.cli.redis_server import free_port
from tests.dashboards import ALERTS
from tests.helpers import wait_for

SCRAPE_S = 1
#: Process label -> the service it runs (also its target's `component` label in Prometheus).
SERVICES = {
    "filter": "filter",
    "uploader-1": "uploader",
    "uploader-2": "uploader",
    "fetcher": "fetcher",
}

Json = dict[str, Any]


class Prometheus:
    """A real Prometheus on a loopback port: temporary configuration and storage, every target
    scraped each ``SCRAPE_S``, the alert rules loaded."""

    def __init__(self, directory: Path, binary: str, targets: Mapping[str, tuple[int, str]]):
        self.directory = directory
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        #: When every target had been scraped once: the first samples are no later.
        self.scraping_since = 0.0
        self.log = directory / "prometheus.log"
        self._http: aiohttp.ClientSession | None = None

    def config(self) -> Json:
        interval = f"{SCRAPE_S}s"
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "mati2sentinel",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": {"component": component}}
                        for port, component in self.targets.values()
                    ],
                }
            ],
        }

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        check = await asyncio.create_subprocess_exec(
            str(Path(self.binary).with_name("promtool")),
            "check",
            "config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(check.communicate(), 30)
        assert check.returncode == 0, out.decode()
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.started_at = time.time()
        self._http = aiohttp.ClientSession()

        async def ready() -> bool:
            assert self.process is not None
            assert self.process.returncode is None, self.log.read_text()[-2000:]
            try:
                async with self.http.get(f"{self.url}/-/ready") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(ready, 30, what="Prometheus to be ready", interval=0.1)

        # Service discovery hands the targets to the scrape loops some seconds after start.
        async def scraping() -> bool:
            active = (await self.api("targets", state="active"))["activeTargets"]
            tried = [t for t in active if t["health"] != "unknown"]
            return len(tried) == len(self.targets)

        await wait_for(scraping, 30, what="Prometheus to scrape its targets", interval=0.2)
        self.scraping_since = time.time()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._http is not None:
            await self._http.close()

    async def api(self, path: str, **params: str | float) -> Any:
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
            assert response.status == 200, body
            assert body["status"] == "success", body
            return body["data"]

    async def instant(self, expr: str, at: float | None = None) -> list[Json]:
        data = await self.api("query", query=expr, time=at if at is not None else time.time())
        result: list[Json] = data["result"]
        return result

    async def scalar(self, expr: str) -> float | None:
        result = await self.instant(expr)
        return float(result[0]["value"][1]) if result else None


@contextlib.asynccontextmanager
async def running(prometheus: Prometheus) -> AsyncIterator[Prometheus]:
    try:
        await prometheus.start()
        yield prometheus
    except BaseException:
        if prometheus.log.exists():
            print("---- prometheus.log (last 30 lines)")
            print(*prometheus.log.read_text(errors="replace").splitlines()[-30:], sep="\n")
        raise
    finally:
        await prometheus.stop()
