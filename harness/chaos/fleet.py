"""The service processes of a chaos run, kept the way Kubernetes keeps a Deployment's pods: a
killed process is started again (after the plan's delay), and so is one that exited on its
own, which is recorded, since a process that needs restarting by itself is a finding.

Each incarnation of a replica logs to its own file (``<service>-<replica>.<n>.log``), so the
port its probes listen on (``HEALTH_PORT=0``) and its consumer name are read from its own
``service.started`` line. Nothing here touches Redis or the bus: restarting is the only hand
the harness lends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from harness.chaos.phases import client_ports
from harness.pipeline import Pipeline
from services.cli.supervisor import Child, ServiceProcesses

#: The order services start in: the fetcher last, so the back-fill meets consumers.
START_ORDER = ("filter", "uploader", "fetcher")


@dataclass
class Replica:
    """One replica of a service across its incarnations."""

    service: str
    index: int
    incarnation: int = 0
    child: Child | None = None
    #: Set while the harness restarts it: an exit then is its own doing, not the process's.
    expected_down: bool = False
    #: Held while it is killed, stopped or started, so those never interleave.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def label(self) -> str:
        return f"{self.name}.{self.incarnation}"

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.process.pid

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    @property
    def consumer(self) -> str | None:
        """Its bus consumer name, as ``services.runtime.consumer_name`` forms it."""
        pid = self.pid
        return None if pid is None else f"{self.service}-{socket.gethostname()}-{pid}"


@dataclass(frozen=True)
class Exit:
    """A process that exited without being killed or stopped: its code and last lines."""

    replica: str
    code: int | None
    at: float
    tail: list[str]


@dataclass
class Fleet:
    pipeline: Pipeline
    replicas: Mapping[str, int]
    members: list[Replica] = field(default_factory=list)
    unplanned: list[Exit] = field(default_factory=list)
    restarts: int = 0

    def __post_init__(self) -> None:
        self.members = [
            Replica(service, n) for service in START_ORDER for n in range(self.replicas[service])
        ]

    def of(self, service: str, index: int = 0) -> Replica:
        return next(r for r in self.members if r.service == service and r.index == index)

    def serving(self, service: str) -> list[Replica]:
        return [r for r in self.members if r.service == service]

    def _processes(self) -> ServiceProcesses:
        if self.pipeline.processes is None:
            raise RuntimeError("the pipeline is not started")
        return self.pipeline.processes

    async def start(self) -> None:
        for replica in self.members:
            async with replica.lock:
                await self._launch(replica)

    async def _launch(self, replica: Replica) -> None:
        replica.incarnation += 1
        replica.child = await self.pipeline.start_service(replica.service, label=replica.label)
        replica.expected_down = False

    async def kill(
        self, replica: Replica, incarnation: int, server_port: int | None = None
    ) -> frozenset[int] | None:
        """SIGKILL that incarnation; the ports its connections to ``server_port`` held just
        before (what a Sentinel upload it had in flight came from), or None when that
        incarnation is not running any more (stopped by a rollout meanwhile)."""
        async with replica.lock:
            child = replica.child
            if child is None or not child.running or replica.incarnation != incarnation:
                return None
            pid = child.process.pid
            ports = frozenset(client_ports(pid, server_port)) if server_port else frozenset()
            replica.expected_down = True
            await self._processes().kill(child)
            return ports

    async def restart(self, replica: Replica, after_s: float) -> None:
        """Start the next incarnation ``after_s`` later (what the kubelet does after a crash)."""
        await asyncio.sleep(after_s)
        async with replica.lock:
            if replica.running:
                return
            await self._launch(replica)
            self.restarts += 1

    async def rolling_restart(self, service: str) -> None:
        """SIGTERM each replica in turn and start its next incarnation, as a rollout does."""
        for replica in self.serving(service):
            async with replica.lock:
                if replica.child is not None and replica.running:
                    replica.expected_down = True
                    await self.pipeline.stop_service(replica.child)
                await self._launch(replica)

    async def supervise(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        """Restart any process that exited on its own, and record it; one that keeps exiting
        waits longer each time (10 s, doubling, at most 5 min), as a kubelet's back-off."""
        due: dict[str, float] = {}
        while not stop.is_set():
            for replica in self.members:
                child = replica.child
                if child is None or child.running or replica.expected_down:
                    continue
                if replica.name not in due:
                    code, tail = child.process.returncode, self.tail(replica)
                    self.unplanned.append(Exit(replica.label, code, time.monotonic(), tail))
                    in_a_row = sum(e.replica.startswith(f"{replica.name}.") for e in self.unplanned)
                    due[replica.name] = time.monotonic() + min(300.0, 10.0 * 2 ** (in_a_row - 1))
                if time.monotonic() < due[replica.name]:
                    continue
                async with replica.lock:
                    del due[replica.name]
                    if replica.child is child and not replica.expected_down:
                        await self._launch(replica)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    def log_path(self, replica: Replica) -> Path:
        return self.pipeline.state_dir / "logs" / f"{replica.label}.log"

    def tail(self, replica: Replica, lines: int = 15) -> list[str]:
        path = self.log_path(replica)
        if not path.exists():
            return []
        return path.read_text(errors="replace").splitlines()[-lines:]

    def started(self, replica: Replica) -> dict[str, Any] | None:
        """The ``service.started`` line of its current incarnation, once written."""
        for event in log_events(self.log_path(replica)):
            if event.get("event") == "service.started":
                return event
        return None

    async def ready(self, replica: Replica, session: aiohttp.ClientSession) -> bool:
        """Its ``/readyz`` answers 200."""
        started = self.started(replica)
        if not replica.running or started is None:
            return False
        port = started.get("health_port")
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                return response.status == 200
        except (aiohttp.ClientError, OSError):
            return False


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a service log (others skipped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events
