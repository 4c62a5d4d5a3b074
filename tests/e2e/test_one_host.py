"""The README's "Running each service on its own" sequence, run as a user types it: the
simulators (``python -m simulators``, from the development tree), then ``mati2sentinel
filter``, ``mati2sentinel uploader`` and ``mati2sentinel sync --once`` as separate commands on
one host, every setting at its default but the ones the simulators write (and ``REDIS_URL``: a
test cannot count on 6379 being free, while the probe ports it does use, 8082 and 8083, are the
point of the test)."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import pytest

from services.cli.redis_server import LocalRedis
from tests.helpers import wait_for

#: The README's sequence, after Redis: (command line, runs in the background).
SEQUENCE = (
    (("python", "-m", "simulators", "--indicators", "2000", "--env-file", ".state/sim.env"), True),
    (("mati2sentinel", "filter"), True),
    (("mati2sentinel", "uploader"), True),
    (("mati2sentinel", "sync", "--once"), False),
)
#: How this test runs each program the README names: with the interpreter running the tests.
PROGRAMS = {"python": (sys.executable,), "mati2sentinel": (sys.executable, "-m", "services.cli")}


def label(args: tuple[str, ...]) -> str:
    """``simulators`` for ``python -m simulators``; the subcommand for ``mati2sentinel``."""
    return args[2] if args[0] == "python" else args[1]


class Host:
    """One working directory, one environment, commands started like a shell starts them."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self.env = dict(env)
        self.background: list[tuple[str, Process]] = []

    async def _spawn(self, args: tuple[str, ...], stdout: IO[bytes] | int) -> Process:
        return await asyncio.create_subprocess_exec(
            *PROGRAMS[args[0]],
            *args[1:],
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def start(self, *args: str) -> Process:
        """``args &``, its output in ``<label>.log``."""
        with (self.cwd / f"{label(args)}.log").open("ab") as log:
            process = await self._spawn(args, log)
        self.background.append((label(args), process))
        return process

    async def run(self, *args: str, timeout_s: float = 60.0) -> tuple[int, str]:
        """``args``: its exit code and output."""
        process = await self._spawn(args, asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(process.communicate(), timeout_s)
        return process.returncode or 0, out.decode()

    def log(self, name: str) -> str:
        path = self.cwd / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop_all(self) -> dict[str, int]:
        codes = {}
        for name, process in reversed(self.background):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            try:
                codes[name] = await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                codes[name] = await process.wait()
        return codes


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    redis = LocalRedis(tmp_path / "redis")
    await asyncio.to_thread(redis.start)
    # Only what a login shell has, plus the Redis URL (see the module docstring).
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis.url}
    work = tmp_path / "host"
    work.mkdir()
    machine = Host(work, env)
    try:
        yield machine
    finally:
        await machine.stop_all()
        await asyncio.to_thread(redis.stop)


def read_env_file(path: Path) -> dict[str, str]:
    """What ``set -a; . .state/sim.env; set +a`` exports."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs}


async def status(host: Host) -> dict[str, Any]:
    code, out = await host.run("mati2sentinel", "status", "--json")
    assert code == 0, out
    parsed: dict[str, Any] = orjson.loads(out)
    return parsed


async def workspace_objects(host: Host) -> int:
    """What the simulated workspace holds, asked over its control route as any client would."""
    base = host.env["SENTINEL_BASE_URL"]
    context = ssl.create_default_context(cafile=str(host.cwd / host.env["SSL_CERT_FILE"]))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/_sim/workspace", ssl=context) as answer,
    ):
        body = await answer.json()
    return int(body["objects"])


@pytest.mark.timeout(180)
async def test_the_readme_one_host_sequence_works_with_default_settings(host: Host) -> None:
    (simulate, _), *services, (sync, _) = SEQUENCE
    await host.start(*simulate)
    await wait_for(lambda: "ready" in host.log("simulators"), 60, what="the simulators")
    host.env.update(read_env_file(host.cwd / ".state" / "sim.env"))

    for args, _ in services:
        await host.start(*args)
    for name, port in (("filter", 8082), ("uploader", 8083)):
        await wait_for(
            lambda name=name: "service.started" in host.log(name), 30, what=f"{name} started"
        )
        assert f'"health_port":{port}' in host.log(name), host.log(name)

    code, out = await host.run(*sync)
    assert code == 0, out
    assert "Traceback" not in out
    assert ": completed," in out.strip().splitlines()[-1], out

    async def drained() -> dict[str, Any] | None:
        now = await status(host)
        upload = next(e for e in now["entities"] if e["entity"].startswith("upload."))
        counters = now["counters"]
        busy = upload["depth"] + upload["in_flight"]
        done = counters.get("forwarded", 0) > 0 and busy == 0
        return now if done and counters.get("uploaded") == counters["forwarded"] else None

    final = await wait_for(drained, 120, what="the uploads to finish", interval=0.5)
    assert final["circuit"] == "closed"
    assert all(e["dead_letter"] == 0 for e in final["entities"])
    assert await workspace_objects(host) == final["counters"]["uploaded"]

    codes = await host.stop_all()
    assert codes == {"uploader": 0, "filter": 0, "simulators": 0}, codes
    for name in ("filter", "uploader", "simulators"):
        assert "Traceback" not in host.log(name), host.log(name)
