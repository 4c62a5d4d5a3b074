"""How the chaos run sees, from outside, what a service process is doing when it kills it; no
hook in the product.

- **mid-page** (fetcher): a ``/v4/indicator`` request of the fetcher is in flight; the MATI
  simulator holds it while the kill happens (``simulators.gates``, arrival).
- **mid-publish**, fetcher: the page's answer has just been written to the fetcher, which is
  publishing it (gates, answered). Filter: it holds raw messages (pending to its consumer in
  the subscription) while the upload queue or the priority lane just grew (``entries-added``
  moved since the previous look, 20 ms before): it is forwarding.
- **mid-batch**, filter: it holds raw messages. Uploader: it holds upload or revocation
  messages and has no request to Sentinel in flight (waiting for the budget, lingering).
- **mid-upload** (uploader): its request to Sentinel is in flight; the simulator holds it
  while the kill happens, then stores what it carried (the answer goes nowhere).
- **mid-commit** (uploader): Sentinel has just written a 200 to it; it has not settled yet.

A request is the process's when the client port it came from is one of the process's own
connections to that server (``client_ports``: its socket inodes in ``/proc/<pid>/fd``, looked
up in ``/proc/net/tcp``). "Holds messages" is ``XPENDING`` for its consumer name: Redis
Streams only. On Service Bus the held messages are not visible from outside, so those two
phases are never observed there and the kill falls back to a random moment (reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from harness.chaos.scheduler import Phase
from shared.adapters.redis_streams import GROUP
from shared.adapters.redis_streams_keys import entity_keys
from shared.contract.bus import Source
from simulators.gates import Gates, Hook, Passing
from simulators.sentinel import STIX_ROUTE

#: How often a polled phase is looked at.
POLL_S: Final = 0.02
#: The MATI route of ``/v4/indicator`` pages.
PAGE_ROUTE: Final = "indicator"

Kill = Callable[[], Awaitable[None]]


def client_ports(pid: int, server_port: int) -> set[int]:
    """The local ports of ``pid``'s TCP connections to ``server_port`` on loopback."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    if not inodes:
        return set()
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.rpartition(":")[2], 16) == server_port:
            ports.add(int(local.rpartition(":")[2], 16))
    return ports


class Watcher:
    """Waits for a replica to be in a phase and kills it there (``strike``)."""

    def __init__(
        self,
        redis: Redis,
        *,
        mati: Gates,
        mati_port: int,
        sentinel: Gates,
        sentinel_port: int,
        sources: dict[str, Source] | None,
    ) -> None:
        """``sources``: the subscription, upload queue and revocation lane on Redis Streams
        (keys ``subscription``, ``upload``, ``revoke``); None on another bus."""
        self._redis = redis
        self._mati, self._mati_port = mati, mati_port
        self._sentinel, self._sentinel_port = sentinel, sentinel_port
        self._streams = (
            None
            if sources is None
            else {k: entity_keys("m2s", s).stream for k, s in sources.items()}
        )

    async def strike(self, service: str, pid: int, consumer: str, phase: Phase,
                     kill: Kill, timeout_s: float) -> bool:  # fmt: skip
        """Wait up to ``timeout_s`` for process ``pid`` of ``service`` to be in ``phase`` and
        run ``kill`` there; whether it was (False: nothing was done)."""
        if phase is Phase.MID_PAGE:
            return await self._gated(self._mati, "arrival", PAGE_ROUTE, pid, kill, timeout_s)
        if phase is Phase.MID_PUBLISH and service == "fetcher":
            return await self._gated(self._mati, "answer", PAGE_ROUTE, pid, kill, timeout_s)
        if phase is Phase.MID_UPLOAD:
            return await self._gated(self._sentinel, "arrival", STIX_ROUTE, pid, kill, timeout_s)
        if phase is Phase.MID_COMMIT:
            return await self._gated(self._sentinel, "answer", STIX_ROUTE, pid, kill, timeout_s)
        if self._streams is None:
            return False
        if phase is Phase.MID_BATCH and service == "filter":
            condition = self._holds(consumer, "subscription")
        elif phase is Phase.MID_BATCH:
            condition = self._uploader_between_requests(consumer, pid)
        else:
            condition = self._forwarding(consumer)
        return await self._polled(condition, kill, timeout_s)

    # -- the gated phases ----------------------------------------------------------------

    async def _gated(
        self, gates: Gates, moment: str, route: str, pid: int, kill: Kill, timeout_s: float
    ) -> bool:
        table = gates.on_arrival if moment == "arrival" else gates.on_answer
        server_port = self._mati_port if gates is self._mati else self._sentinel_port
        seen = asyncio.Event()
        killed = asyncio.Event()

        async def hook(passing: Passing) -> None:
            if seen.is_set() or passing.peer_port is None:
                return
            if passing.peer_port not in client_ports(pid, server_port):
                return
            seen.set()
            try:
                await kill()
            finally:
                killed.set()

        chosen: Hook = hook
        table[route] = chosen
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.wait(), timeout_s)
        finally:
            if table.get(route) is chosen:
                del table[route]
        if not seen.is_set():
            return False
        await killed.wait()
        return True

    # -- the polled phases ---------------------------------------------------------------

    async def _polled(
        self, condition: Callable[[], Awaitable[bool]], kill: Kill, timeout_s: float
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                now = await condition()
            except RedisError:
                now = False
            if now:
                await kill()
                return True
            await asyncio.sleep(POLL_S)
        return False

    def _holds(self, consumer: str, *which: str) -> Callable[[], Awaitable[bool]]:
        async def holds() -> bool:
            return await self._pending(consumer, *which) > 0

        return holds

    def _uploader_between_requests(self, consumer: str, pid: int) -> Callable[[], Awaitable[bool]]:
        async def between() -> bool:
            if await self._pending(consumer, "upload", "revoke") == 0:
                return False
            in_flight = {p.peer_port for p in self._sentinel.in_flight.values()}
            return not in_flight & client_ports(pid, self._sentinel_port)

        return between

    def _forwarding(self, consumer: str) -> Callable[[], Awaitable[bool]]:
        last: list[int] = []

        async def forwarding() -> bool:
            added = await self._added("upload") + await self._added("revoke")
            grew = bool(last) and added > last[-1]
            last[:] = [added]
            return grew and await self._pending(consumer, "subscription") > 0

        return forwarding

    async def held_by(self, consumer: str) -> frozenset[str] | None:
        """The MATI ids of the raw messages pending to ``consumer`` in the subscription (a
        dead filter's stay pending until reclaimed); None where that cannot be seen."""
        if self._streams is None:
            return None
        stream = self._streams["subscription"]
        try:
            pending: Any = await self._redis.xpending_range(
                stream, GROUP, min="-", max="+", count=100_000, consumername=consumer
            )
            ids = [entry["message_id"] for entry in pending]
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.xrange(stream, entry_id, entry_id)
                entries: Any = await pipe.execute() if ids else []
        except RedisError:
            return None
        held = set()
        for found in entries:
            for _, fields in found:
                properties = orjson.loads(fields.get(b"properties", b"{}"))
                held.add(str(properties.get("indicator_id", "")))
        return frozenset(held)

    async def _pending(self, consumer: str, *which: str) -> int:
        assert self._streams is not None
        total = 0
        for key in which:
            try:
                summary: Any = await self._redis.xpending(self._streams[key], GROUP)
            except RedisError as exc:
                if "NOGROUP" in str(exc):
                    continue
                raise
            for entry in summary.get("consumers") or ():
                name = entry["name"]
                if (name.decode() if isinstance(name, bytes) else name) == consumer:
                    total += int(entry["pending"])
        return total

    async def _added(self, which: str) -> int:
        assert self._streams is not None
        try:
            info: Any = await self._redis.xinfo_stream(self._streams[which])
        except RedisError as exc:
            if "no such key" in str(exc).lower():
                return 0
            raise
        return int(info.get("entries-added", 0))
