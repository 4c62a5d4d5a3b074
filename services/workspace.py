"""Reading the workspace back into the seen cache (DESIGN §5 "Reconciliation"), shared by the
uploader (the automatic rebuild after a lost Redis) and ``reconcile --repair``.

A lost seen cache would make the next sync upload every live indicator again, hours of
Sentinel's quota for a large workspace. The workspace knows what it holds: each object's
fingerprint travels in our property extension and its ``valid_until`` in its row, so the
cache is rebuilt from one Log Analytics read instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from shared.adapters.credentials import credential_factory
from shared.adapters.destination_state import DestinationState
from shared.adapters.feed_state import Lease
from shared.adapters.redis_connect import RedisClient
from shared.adapters.suppressions import Suppression
from shared.adapters.workspace_reader import ReadProgress, WorkspaceReader
from shared.adapters.workspace_state import Born, WorkspaceState, new_owner
from shared.core.backoff import Backoff
from shared.core.errors import FatalError, PipelineError, TransientError
from shared.core.events import get_logger
from shared.core.fingerprint import SeenEntry
from shared.core.settings import Settings
from shared.core.timing import UtcClock, utc_now
from shared.core.workspace_objects import WorkspaceObject

log = get_logger(__name__)

#: Seen entries written per round trip while rebuilding.
RESTORE_CHUNK: Final = 500
#: The rebuild's lease: renewed at every partition, so a replica that died mid-rebuild frees
#: it within this long and another takes over.
LEASE_S: Final = 120.0
#: How often the uploader looks whether the state is still born (one ``GET``).
WATCH_S: Final = 5.0
#: A workspace that stays unreachable this long is given up on: the destination starts with an
#: empty cache (re-uploads) rather than not at all.
GIVE_UP_AFTER_S: Final = 600.0
RETRY: Final = Backoff(base_s=2.0, cap_s=60.0)
_JITTER = random.Random()  # noqa: S311 - back-off jitter, not a secret


def open_reader(settings: Settings, http: aiohttp.ClientSession) -> WorkspaceReader:
    """The destination's workspace, read with the uploader's identity over our TLS session."""
    factory = credential_factory(
        session=http,
        tenant_id=settings.azure_tenant_id or "",
        client_id=settings.azure_client_id or "",
        authority_host=settings.azure_authority_host,
        client_secret=settings.azure_client_secret,
        federated_token_file=settings.azure_federated_token_file,
    )
    return WorkspaceReader(
        factory(),
        endpoint=settings.log_analytics_base_url,
        workspace_id=settings.azure_workspace_id or "",
        source_system=settings.sentinel_source_system,
        session=http,
    )


@dataclass
class Restorer:
    """Writes what the workspace holds into the seen cache, a chunk per round trip.

    Generation-0 objects go straight in; a lineage that was revoked and published again has
    several objects (one per generation), possibly in different partitions, so its
    later-generation objects are kept aside and written last, over the earlier ones.

    Suppressions live in Redis too: a revocation ``suppress add`` caused carries its
    suppression, and one whose object is still its lineage's latest is added back (a
    lineage published again since was un-suppressed)."""

    state: WorkspaceState
    clock: UtcClock = utc_now
    overwrite: bool = False
    written: int = 0
    _chunk: list[tuple[str, SeenEntry]] = field(default_factory=list)
    _later: dict[str, tuple[int, SeenEntry]] = field(default_factory=dict)
    _suppressed: dict[str, tuple[int, Suppression]] = field(default_factory=dict)
    suppressions: int = 0

    async def add(self, found: WorkspaceObject) -> None:
        entry = found.seen_entry()
        if entry is None or found.lineage is None:
            return
        if entry.revoked and found.suppressed and found.mati_id:
            suppression = Suppression.decode(found.mati_id, found.suppressed)
            self._suppressed[found.lineage] = (entry.generation, suppression)
        if found.generation:
            kept = self._later.get(found.lineage)
            if kept is None or kept[0] < found.generation:
                self._later[found.lineage] = (found.generation, entry)
            return
        self._chunk.append((found.lineage, entry))
        if len(self._chunk) >= RESTORE_CHUNK:
            await self._flush(self.overwrite)

    async def finish(self) -> int:
        await self._flush(self.overwrite)
        self._chunk = [(lineage, entry) for lineage, (_, entry) in self._later.items()]
        await self._flush(True)
        for lineage, (generation, suppression) in self._suppressed.items():
            latest = self._later.get(lineage, (0, None))[0]
            if generation == latest:
                await self.state.state.suppressions.add(suppression)
                self.suppressions += 1
        self._later, self._suppressed = {}, {}
        return self.written

    async def _flush(self, overwrite: bool) -> None:
        for start in range(0, len(self._chunk), RESTORE_CHUNK):
            part = self._chunk[start : start + RESTORE_CHUNK]
            self.written += await self.state.restore(part, now=self.clock(), overwrite=overwrite)
        self._chunk = []


async def rebuild(
    state: WorkspaceState,
    reader: WorkspaceReader,
    *,
    lease: Lease,
    clock: UtcClock = utc_now,
) -> int:
    """Rebuild the seen cache from the workspace and mark the state born; returns how many
    entries were written. The caller holds the rebuild ``lease``, renewed as it goes."""
    started = time.monotonic()
    await state.rebuild_progress(
        {"state": "running", "started_at": _ms(clock), "owner": lease.owner}, fresh=True
    )
    restorer = Restorer(state, clock)
    last: list[ReadProgress] = []

    def progress(step: ReadProgress) -> None:
        last[:] = [step]
        log.info(
            "rebuild.progress",
            partitions=f"{step.partitions_done}/{step.partitions_total}",
            objects=step.objects_read,
            expected=step.objects_expected,
        )

    read = 0
    async for found in reader.read(progress=progress):
        read += 1
        await restorer.add(found)
        if read % 10_000 == 0 or (last and read == last[0].objects_read):
            await _report(state, lease, last, restorer.written)
    written = await restorer.finish()
    seconds = round(time.monotonic() - started, 1)
    await state.mark_born(Born.REBUILT, at=clock(), objects=written)
    await state.rebuild_progress(
        {
            "state": "done",
            "finished_at": _ms(clock),
            "objects_read": read,
            "written": written,
            "suppressions": restorer.suppressions,
            "seconds": seconds,
        }
    )
    log.info(
        "rebuild.done",
        objects=read,
        written=written,
        suppressions=restorer.suppressions,
        seconds=seconds,
    )
    return written


async def _report(
    state: WorkspaceState, lease: Lease, last: list[ReadProgress], written: int
) -> None:
    if not await lease.renew():
        raise TransientError("the rebuild lease was lost; another replica takes over")
    fields: dict[str, str | int | float] = {"written": written}
    if last:
        step = last[0]
        fields |= {
            "partitions_done": step.partitions_done,
            "partitions_total": step.partitions_total,
            "objects_read": step.objects_read,
            "objects_expected": step.objects_expected,
        }
    await state.rebuild_progress(fields)


def _ms(clock: UtcClock) -> int:
    return int(clock().timestamp() * 1000)


@dataclass
class CacheGuard:
    """The uploader's watch over its destination's state: when it is found empty (new, or lost
    with Redis) it is rebuilt from the workspace (``CACHE_REBUILD=auto``) or marked started
    empty (``off``), and the filter, which holds until then, goes on."""

    state: WorkspaceState
    reader: Callable[[], WorkspaceReader]
    mode: str = "auto"
    clock: UtcClock = utc_now
    give_up_after_s: float = GIVE_UP_AFTER_S

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check(stop)
            except TransientError as exc:
                log.warning("rebuild.unavailable", error=str(exc)[:200])
            except PipelineError as exc:  # never stop the uploader for its watch
                log.error("rebuild.failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_S)

    async def check(self, stop: asyncio.Event) -> None:
        """Once: rebuild (or mark) if the state is not born and nobody else is at it."""
        if await self.state.born() is not None:
            return
        if self.mode == "off":
            await self.state.mark_born(Born.OFF, at=self.clock(), objects=0)
            log.warning("rebuild.off", detail="seen cache empty; CACHE_REBUILD=off")
            return
        lease = self.state.rebuild_lease(new_owner(), ttl_s=LEASE_S)
        if not await lease.acquire():
            return  # another replica rebuilds
        try:
            await self._rebuild(lease, stop)
        finally:
            await lease.release()

    async def _rebuild(self, lease: Lease, stop: asyncio.Event) -> None:
        log.warning("rebuild.start", detail="seen cache empty; rebuilding it from the workspace")
        deadline = time.monotonic() + self.give_up_after_s
        failures = 0
        while not stop.is_set():
            reader = self.reader()
            try:
                await rebuild(self.state, reader, lease=lease, clock=self.clock)
                return
            except FatalError as exc:
                await self._skip(str(exc))
                return
            except TransientError as exc:
                failures += 1
                if time.monotonic() >= deadline:
                    await self._skip(f"unreachable for {self.give_up_after_s:.0f} s: {exc}")
                    return
                wait = RETRY.jittered(failures, _JITTER)
                await self.state.rebuild_progress({"state": "retrying", "error": str(exc)[:300]})
                log.warning("rebuild.retry", error=str(exc)[:200], retry_in_s=round(wait, 1))
                await lease.renew()  # the wait (at most RETRY's cap) is shorter than LEASE_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
            finally:
                await reader.close()

    async def _skip(self, why: str) -> None:
        """Start empty, loudly: holding the destination for good would lose more than a
        re-upload costs."""
        log.error("rebuild.skipped", error=why[:300])
        await self.state.rebuild_progress({"state": "skipped", "error": why[:300]})
        await self.state.mark_born(Born.SKIPPED, at=self.clock(), objects=0)


def workspace_state(client: RedisClient, destination: str) -> WorkspaceState:
    return WorkspaceState(client, DestinationState(client, destination))
