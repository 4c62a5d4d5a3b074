"""The three services as child processes of one command, for a single machine.

``ServiceProcesses`` starts each service as ``python -m services.<name>`` with a given
environment, stops them the way Kubernetes does (SIGTERM, then SIGKILL after a grace period),
and can kill one outright, which the delivery tests use to prove nothing is lost.
``run_local`` is ``make run``: a private Redis plus the three services until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from services.cli.redis_server import LocalRedis
from shared.adapters import destinations_file
from shared.core.destinations import overlays
from shared.core.errors import ConfigError
from shared.core.events import get_logger

log = get_logger(__name__)

SERVICES = ("fetcher", "filter", "uploader")


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class ServiceProcesses:
    """Children started with one environment; each runs until stopped or killed."""

    def __init__(self, env: Mapping[str, str], *, log_dir: Path | None = None) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.children: list[Child] = []

    async def start(
        self,
        name: str,
        *args: str,
        label: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start ``python -m services.<name> args``, with ``env`` over the common environment;
        its output goes to ``<label>.log`` when a log directory was given, else to ours."""
        label = label or name
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{label}.log").open("ab")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{name}",
            *args,
            env={**self.env, **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT if out is not None else None,
        )
        child = Child(label, process, out)
        self.children.append(child)
        return child

    async def wait(self, child: Child, timeout_s: float) -> int:
        code = await asyncio.wait_for(child.process.wait(), timeout_s)
        self._close(child)
        return code

    async def kill(self, child: Child) -> None:
        """SIGKILL: the way a pod dies when its node goes; nothing gets to clean up."""
        if child.running:
            child.process.kill()
        await child.process.wait()
        self._close(child)

    async def stop(self, child: Child, grace_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``grace_s`` (Kubernetes' terminationGracePeriodSeconds)."""
        if child.running:
            child.process.send_signal(signal.SIGTERM)
        try:
            return await self.wait(child, grace_s)
        except TimeoutError:
            log.warning("local.kill_after_grace", service=child.name, grace_s=grace_s)
            await self.kill(child)
            return -signal.SIGKILL

    async def stop_all(self, grace_s: float = 30.0) -> dict[str, int]:
        codes = await asyncio.gather(*(self.stop(c, grace_s) for c in self.children))
        return {c.name: code for c, code in zip(self.children, codes, strict=True)}

    @staticmethod
    def _close(child: Child) -> None:
        if child.log_file is not None:
            child.log_file.close()
            child.log_file = None


def destination_names(environ: Mapping[str, str]) -> list[str | None]:
    """The destinations ``DESTINATIONS_FILE`` declares, or ``[None]``: the environment's one."""
    document = destinations_file.read(environ)
    if document is None:
        return [None]
    return list(overlays(document, environ))


async def run_local(env: Mapping[str, str], state_dir: Path) -> int:
    """``make run``: a private Redis in ``state_dir`` (unless ``REDIS_URL`` is set) and the
    three services, until SIGINT or SIGTERM; then the services drain and everything stops."""
    redis: LocalRedis | None = None
    environment = dict(env)
    destinations = destination_names(environment)  # a bad file stops us before Redis starts
    if "REDIS_URL" not in environment:
        redis = LocalRedis(state_dir / "redis")
        try:
            await asyncio.to_thread(redis.start)
        except OSError as exc:
            raise ConfigError(
                [f"--state-dir {state_dir}: {exc.strerror or exc}: give a writable directory"]
            ) from None
        environment["REDIS_URL"] = redis.url
        print(f"redis: {redis.url} (AOF in {state_dir / 'redis'})", flush=True)
    # Each service takes its own default probe port (fetcher 8081, filter 8082, uploader
    # 8083); one HEALTH_PORT for all three would let only the first of them start.
    if environment.get("HEALTH_PORT", "0") != "0":
        print(f"HEALTH_PORT={environment.pop('HEALTH_PORT')} ignored: each service takes its own")
    processes = ServiceProcesses(environment)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        for destination in destinations:
            # One filter and one uploader per destination; with several, each takes any free
            # probe port (logged at its start), since the defaults are one per service.
            own = {} if destination is None else {"DESTINATION": destination, "HEALTH_PORT": "0"}
            for name in ("filter", "uploader"):
                label = name if destination is None else f"{name}-{destination}"
                await processes.start(name, label=label, env=own)
        await processes.start("fetcher")
        # Run until asked to stop, or until a service exits on its own (it crashed, or its
        # settings were refused): then stop the others rather than run half a pipeline.
        waits = [asyncio.ensure_future(c.process.wait()) for c in processes.children]
        waits.append(asyncio.ensure_future(stop.wait()))
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        codes = await processes.stop_all()
        return 0 if all(code == 0 for code in codes.values()) else 1
    finally:
        if redis is not None:
            await asyncio.to_thread(redis.stop)
