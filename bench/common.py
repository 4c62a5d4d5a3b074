"""What every figure shares: the result record, a private Redis, honest counters.

Each figure is a *ratio to the binding limit* measured within one run, because these machines
are noisy: a figure that compares two runs compares two machines. The absolute numbers ride
beside the ratio so a reader can check the arithmetic.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from harness.pipeline import ACCEPT_ALL
from services.cli.redis_server import LocalRedis
from shared.adapters.redis_connect import CPackedConnection

#: What the pipeline figures run with beside ``ACCEPT_ALL``: a short lock so a stuck message
#: comes back within seconds, a short linger so the tail of a run drains fast.
PIPELINE_ENV: Mapping[str, str] = {
    **ACCEPT_ALL,
    "BUS_LOCK_DURATION_SECONDS": "10",
    "UPLOAD_LINGER_SECONDS": "0.2",
    "DRAIN_TIMEOUT_SECONDS": "10",
    "LOG_LEVEL": "INFO",
}


@dataclass
class Figure:
    """One line of the table: the ratio to the binding limit, its target, and the evidence."""

    key: str
    title: str
    ratio: float | None
    target: str
    passed: bool | None
    absolute: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "ratio": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "absolute": self.absolute,
            "note": self.note,
        }


class CountingConnection(CPackedConnection):
    """A Redis connection that counts what it writes to the socket: one packed write is one
    round trip (a single command, or a whole pipeline), whatever the command is."""

    round_trips = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).round_trips += 1
        await super().send_packed_command(command, check_health)


def counting_client(url: str) -> Redis:
    """A client whose every round trip is counted in ``CountingConnection.round_trips``.

    ``socket_timeout`` as the services use it (the bus's blocking read needs more than 1 s).
    """
    return Redis.from_url(url, socket_timeout=30, connection_class=CountingConnection)


@asynccontextmanager
async def private_redis(prefix: str = "m2s-bench-") -> AsyncIterator[LocalRedis]:
    """A redis-server of the product's own configuration (AOF, fsync always) in a temp dir."""
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        server = LocalRedis(Path(directory) / "redis")
        await asyncio.to_thread(server.start)
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop)


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size of a live process (``VmHWM``), in bytes; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


async def redis_info(client: Redis, section: str) -> dict[str, Any]:
    info: dict[str, Any] = await client.info(section)
    return info


async def poll_until(
    predicate: Callable[[], Awaitable[bool] | bool],
    *,
    timeout_s: float,
    interval_s: float = 0.02,
    what: str = "condition",
) -> float:
    """Poll until ``predicate`` holds; returns the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(interval_s)


def cpu_count() -> int:
    return os.cpu_count() or 1


def mib(n: int | None) -> float | None:
    return None if n is None else round(n / (1024 * 1024), 1)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU a live process used so far (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
