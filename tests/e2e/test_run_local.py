"""``make run``'s command: a private Redis and the three services under one supervisor.

Pointed at the simulators instead of the real APIs, it must sync at start, deliver the accepted
set, and on SIGTERM stop every service cleanly and its Redis with them.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest

from harness.pipeline import Pipeline
from simulators.feed import Feed
from tests.helpers import wait_for


def port_open(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


@pytest.mark.timeout(90)
async def test_run_local_syncs_at_start_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    async with Pipeline(tmp_path / "pipeline", feed=Feed(seed=3, count=800, days=29)) as p:
        # make run's own Redis, and each service on its own default probe port.
        env = {k: v for k, v in p.env.items() if k not in ("REDIS_URL", "HEALTH_PORT")}
        state_dir = tmp_path / "local"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "run-local", "--state-dir", str(state_dir),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert first.startswith("redis: redis://127.0.0.1:")
        redis_url = first.split()[1]
        output = asyncio.ensure_future(process.stdout.read())

        expected = set(p.expected().objects)

        async def delivered() -> bool:
            assert process.returncode is None, (await output).decode()[-2000:]
            return set(p.sims.sentinel.store) == expected

        await wait_for(delivered, 60, what="run-local to deliver the accepted set", interval=0.2)

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0, (await output).decode()[-2000:]
        logs = (await output).decode()
        assert logs.count('"event":"service.stopped"') == 3
        for port in (8081, 8082, 8083):
            assert logs.count(f'"health_port":{port}') == 1, logs[-2000:]
        assert not port_open(redis_url)
        assert (state_dir / "redis" / "appendonlydir").is_dir()


@pytest.mark.timeout(120)
async def test_run_local_runs_a_filter_and_an_uploader_per_destination(tmp_path: Path) -> None:
    async with Pipeline(tmp_path / "pipeline", feed=Feed(seed=5, count=600, days=29)) as p:
        wide = await p.add_destination("wide", {"MINIMUM_CONFIDENCE": 0, "EXCLUDE_OSINT": False})
        narrow = await p.add_destination("narrow", {"INCLUDE_URL": False}, own_tenant=True)
        env = {k: v for k, v in p.env.items() if k not in ("REDIS_URL", "HEALTH_PORT")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "run-local", "--state-dir", str(tmp_path / "l"),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        output = asyncio.ensure_future(process.stdout.read())
        expected = {
            name: set(p.expected(settings=p.settings_of(name)).objects) for name in p.destinations
        }
        assert expected["wide"] > expected["narrow"]

        async def delivered() -> bool:
            assert process.returncode is None, (await output).decode()[-2000:]
            return (set(wide.sentinel.store), set(narrow.sentinel.store)) == (
                expected["wide"],
                expected["narrow"],
            )

        await wait_for(delivered, 90, what="both workspaces' accepted sets", interval=0.2)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0, (await output).decode()[-2000:]
        logs = (await output).decode()
        assert logs.count('"event":"service.stopped"') == 5
        for name in ("wide", "narrow"):
            assert logs.count(f'"service":"uploader","destination":"{name}"') > 0
        assert not p.sims.sentinel.store, "the environment's own workspace is fed no more"
