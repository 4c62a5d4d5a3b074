"""One sync: page MATI over a ``last_updated`` window and publish every raw indicator.

The order of effects is the whole point (DESIGN §2, §4): for each page, publish every record
in ONE publish call, THEN advance the checkpoint to the newest ``last_updated`` of that page,
THEN count it. A crash anywhere in between re-fetches the page on the next run, and the bus's
duplicate detection (content-derived message ids) drops what was already published: nothing is
checkpointed before the bus has it, and nothing is lost.

Judging records is the filter's job: a page is published whole, bad records included, so the
filter counts and dead-letters them with a reason instead of the fetcher silently skipping them.
A record no message can carry (too large, nested too deep) is published as a stand-in with its
id and why (``shared.contract.messages.raw_message``), logged here (``page_records.refused``)
and counted by the filter that dead-letters it (``rejected_too_large``/``rejected_too_deep``):
one such record costs that record, never its page or the feed.

A **full** sync (``sync --once --full``) pages the whole window that can still hold live
indicators (``FetcherConfig.full_window``) whatever the checkpoint says, so a settings change
reaches every indicator in the workspace. Its messages carry the run in their ids: the bus
would otherwise drop them as duplicates of the last sync's. It never moves the checkpoint:
it drops what the workspace let expire, which a normal sync from the checkpoint (a back-fill
that was interrupted, say) must still upload.

Every failure of MATI, the bus or Redis ends the sync with outcome ``failed``; it never crashes
the process. The checkpoint then stays at the last confirmed page and the next run resumes
there. Only a bug (an exception outside the pipeline's error tree) propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import Enum, StrEnum

from services.fetcher import page_records
from services.fetcher.config import MATI_RETENTION, RETENTION_MARGIN, FetcherConfig
from shared.adapters.feed_state import FeedState, FetcherLease
from shared.adapters.mati_client import MatiClient
from shared.adapters.mati_paging import IndicatorQuery, RawPage
from shared.contract.bus import Bus
from shared.contract.messages import INDICATORS, raw_message, subscription
from shared.core.errors import FatalError, PagingInterrupted, PipelineError
from shared.core.timing import UtcClock, utc_now
from shared.telemetry import logs, tracing

log = logs.get_logger(__name__)


def new_run_id(now: datetime | None = None) -> str:
    """``20250601T120000Z-1a2b3c``: sortable, readable in logs and message properties."""
    moment = (now or utc_now()).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class Outcome(StrEnum):
    COMPLETED = "completed"  # the whole window is published and checkpointed
    STOPPED = "stopped"  # ``stop`` was set; ended after the page in hand
    LEASE_LOST = "lease_lost"  # another fetcher holds the lease now; it carries on
    FAILED = "failed"  # MATI, the bus or Redis failed; the next run resumes
    STANDBY = "standby"  # another fetcher holds the lease; nothing was done


@dataclass(frozen=True, slots=True)
class SyncSummary:
    """The funnel of one sync, as ``status`` shows it and ``fetch.sync_finished`` logs it."""

    run_id: str
    outcome: Outcome
    window_start: datetime | None
    window_end: datetime | None
    pages: int
    fetched: int
    published: int
    restarts: int
    checkpoint: datetime | None
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    full: bool = False

    def to_record(self) -> dict[str, object]:
        """JSON-ready fields for ``FeedState.record_run`` and the log line."""
        record: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        record["outcome"] = self.outcome.value
        record["duration_s"] = round((self.finished_at - self.started_at).total_seconds(), 3)
        return record


@dataclass(slots=True)
class _Progress:
    """What one sync has done so far; only confirmed pages are counted."""

    run_id: str
    started_at: datetime
    window_start: datetime | None = None
    window_end: datetime | None = None
    pages: int = 0
    fetched: int = 0
    published: int = 0
    restarts: int = 0
    checkpoint: datetime | None = None
    #: The newest ``last_updated`` this sync published (the checkpoint may be ahead of it).
    reached: datetime | None = None
    full: bool = False
    lease_lost: asyncio.Event = field(default_factory=asyncio.Event)

    def summary(
        self, outcome: Outcome, error: PipelineError | None, finished_at: datetime
    ) -> SyncSummary:
        return SyncSummary(
            self.run_id, outcome, self.window_start, self.window_end, self.pages, self.fetched,
            self.published, self.restarts, self.checkpoint, self.started_at, finished_at,
            None if error is None else _describe(error), self.full,
        )  # fmt: skip


@dataclass(kw_only=True, eq=False)
class Fetcher:
    """Runs syncs with injected parts; one per process, reused for every sync."""

    client: MatiClient
    bus: Bus
    feed: FeedState
    lease: FetcherLease
    config: FetcherConfig
    clock: UtcClock = utc_now
    _system: str = field(init=False)

    def __post_init__(self) -> None:
        self._system = tracing.messaging_system(self.bus)

    async def sync(self, run_id: str, stop: asyncio.Event, *, full: bool = False) -> SyncSummary:
        """One sync of the window since the checkpoint (``full``: of ``config.full_window``);
        never raises for a pipeline error."""
        progress = _Progress(run_id, self.clock(), full=full)
        with logs.bind(run_id=run_id):
            try:
                held = await self.lease.acquire()
            except PipelineError as exc:
                log.error("fetch.lease_unavailable", error=_describe(exc))
                return await self._finish(progress, Outcome.FAILED, exc)
            if not held:
                await self._stand_by()
                return progress.summary(Outcome.STANDBY, None, self.clock())
            heartbeat = asyncio.create_task(self._keep_lease(progress.lease_lost))
            try:
                outcome, error = await self._run(stop, progress)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                await self._release()
            return await self._finish(progress, outcome, error)

    # ---- the window --------------------------------------------------------------------

    async def _run(
        self, stop: asyncio.Event, progress: _Progress
    ) -> tuple[Outcome, PipelineError | None]:
        if stop.is_set():
            return Outcome.STOPPED, None
        try:
            # A topic publish reaches only subscriptions that exist: make every
            # destination's exist first.
            for destination in self.config.destinations:
                await self.bus.ensure(subscription(destination))
            checkpoint = await self.feed.checkpoint()
            end = self.clock()
            if checkpoint is not None:
                progress.checkpoint = checkpoint.last_updated
            if progress.full:
                start, origin = end - self.config.full_window, "full"
            elif checkpoint is None:
                start, origin = end - self.config.initial_lookback, "initial_lookback"
            else:
                start, origin = checkpoint.last_updated - self.config.overlap, "checkpoint"
            start = self._clamped(start, end, origin)
            progress.window_start, progress.window_end = start, end
            log.info(
                "fetch.sync_started",
                window_start=start,
                window_end=end,
                origin=origin,
                destinations=",".join(self.config.destinations),
            )
            return await self._window(start, end, stop, progress), None
        except PipelineError as exc:
            return Outcome.FAILED, exc

    async def _window(
        self, start: datetime, end: datetime, stop: asyncio.Event, progress: _Progress
    ) -> Outcome:
        """Page ``[start, end]``; after an expired cursor, restart from what this sync had
        published (the checkpoint may lie ahead of it in a full sync)."""
        in_a_row = 0
        while True:
            pages_before = progress.pages
            try:
                return await self._pages(self._query(start, end), stop, progress)
            except PagingInterrupted as exc:
                in_a_row = 0 if progress.pages > pages_before else in_a_row + 1
                if in_a_row > self.config.max_restarts:
                    raise
                progress.restarts += 1
                if progress.reached is not None:
                    start = max(start, progress.reached - self.config.overlap)
                start = self._clamped(start, end, "restart")
                await self.feed.count({"cursor_restarts": 1})
                log.warning(
                    "fetch.window_restarted", reason=str(exc), window_start=start, in_a_row=in_a_row
                )

    def _query(self, start: datetime, end: datetime) -> IndicatorQuery:
        return IndicatorQuery(
            start_epoch=math.floor(start.timestamp()),
            # Rounded up: a record stamped within the current second is inside the window.
            end_epoch=math.ceil(end.timestamp()),
            limit=self.config.page_size,
            include_misp=self.config.include_misp,
            sort_by="last_updated:asc",
        )

    def _clamped(self, start: datetime, end: datetime, origin: str) -> datetime:
        """``start`` kept within what MATI serves (and not after ``end``), measured from
        ``end``: a full sync's window is exactly what MATI serves, so it is not clamped."""
        oldest = end - MATI_RETENTION + RETENTION_MARGIN
        if start < oldest:
            # A checkpoint older than 90 days (or a 90-day INITIAL_LOOKBACK) gets here: what
            # changed before ``oldest`` can no longer be fetched, so say so loudly.
            log.warning("fetch.window_clamped", requested=start, start=oldest, origin=origin)
            start = oldest
        if start > end:
            log.warning("fetch.checkpoint_ahead", checkpoint_start=start, now=end)
            start = end
        return start

    # ---- pages -------------------------------------------------------------------------

    async def _pages(
        self, query: IndicatorQuery, stop: asyncio.Event, progress: _Progress
    ) -> Outcome:
        limit = datetime.fromtimestamp(query.end_epoch, UTC)
        pages = self.client.pages(query)
        async with _closing(pages):
            while True:
                asked = time.time_ns()
                page = await _next_page(pages, stop)
                if page is _Signal.STOP:
                    return Outcome.STOPPED
                if page is None:
                    return Outcome.COMPLETED
                # One trace per page: its records' paths through filter and uploader hang
                # under this span (each message carries its context).
                with tracing.span(
                    "fetch page",
                    {
                        "mati.page.index": page.index,
                        "mati.page.records": len(page.indicators),
                        "mati.page.bytes": page.size_bytes,
                        "mati2sentinel.run_id": progress.run_id,
                        "mati2sentinel.destinations": ",".join(self.config.destinations),
                    },
                    root=True,
                    start_time=asked,
                ):
                    await self._publish(page, limit, progress)
                if stop.is_set():
                    return Outcome.STOPPED
                if progress.lease_lost.is_set() or not await self.lease.renew():
                    log.warning("fetch.lease_lost", owner=self.lease.owner)
                    return Outcome.LEASE_LOST

    async def _publish(self, page: RawPage, limit: datetime, progress: _Progress) -> None:
        """Publish the page whole, THEN move the checkpoint, THEN count it."""
        records, run_id = page.indicators, progress.run_id
        page_trace = tracing.inject({})  # every record carries the page's context
        full = progress.full
        messages = [raw_message(r, run_id=run_id, trace=page_trace, full=full) for r in records]
        refused = page_records.refused(messages, page.index)
        with tracing.producer_span(self._system, INDICATORS.name, len(messages)):
            await self.bus.publish(INDICATORS, messages)
        newest, undated, ahead = page_records.newest(records, limit)
        if newest is not None:
            if not progress.full:
                await self.feed.advance(newest, run_id)
                if progress.checkpoint is None or newest > progress.checkpoint:
                    progress.checkpoint = newest
            if progress.reached is None or newest > progress.reached:
                progress.reached = newest
        progress.pages += 1
        progress.fetched += len(records)
        progress.published += len(records)
        await self.feed.count(
            {
                "pages": 1,
                "fetched": len(records),
                "published": len(records),
                "without_last_updated": undated,
                "last_updated_after_window": ahead,
            }
        )
        log.info(
            "fetch.page",
            page=page.index,
            records=len(records),
            bytes=page.size_bytes,
            published=len(records),
            without_last_updated=undated,
            last_updated_after_window=ahead,
            refused=refused,
            checkpoint=progress.checkpoint,
        )

    # ---- lease -------------------------------------------------------------------------

    async def _keep_lease(self, lost: asyncio.Event) -> None:
        """Renew every third of the lease's life, so a page waiting out MATI's back-off does
        not lose it; ``lost`` tells the page loop to stop."""
        interval = self.lease.ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self.lease.renew()
            except PipelineError as exc:
                log.warning("fetch.lease_renew_failed", error=_describe(exc))
                continue
            if not held:
                lost.set()
                return

    async def _release(self) -> None:
        """Let the next sync (ours on schedule, or ``sync --once``) start without waiting for
        the lease to expire; if Redis is down the lease just expires."""
        try:
            await self.lease.release()
        except PipelineError as exc:
            log.warning("fetch.lease_release_failed", error=_describe(exc))

    async def _stand_by(self) -> None:
        holder: str | None = None
        with contextlib.suppress(PipelineError):
            holder = await self.lease.holder()
        log.info("fetch.standby", holder=holder, owner=self.lease.owner)
        with contextlib.suppress(PipelineError):
            await self.feed.count({"sync_standby": 1})

    # ---- the end -----------------------------------------------------------------------

    async def _finish(
        self, progress: _Progress, outcome: Outcome, error: PipelineError | None
    ) -> SyncSummary:
        summary = progress.summary(outcome, error, self.clock())
        if error is not None:
            fatal = isinstance(error, FatalError)  # an operator must act (credentials, TLS)
            (log.error if fatal else log.warning)("fetch.sync_failed", error=summary.error)
        try:
            await self.feed.record_run(summary.to_record())
            await self.feed.count({f"sync_{outcome.value}": 1})
        except PipelineError as exc:
            log.warning("fetch.record_run_failed", error=_describe(exc))
        line = summary.to_record()
        line.pop("run_id")  # bound on every line already
        log.info("fetch.sync_finished", **line)
        return summary


# ---- helpers ---------------------------------------------------------------------------


class _Signal(Enum):
    STOP = "stop"


@contextlib.asynccontextmanager
async def _closing(pages: AsyncIterator[RawPage]) -> AsyncIterator[None]:
    """Close the page generator when we leave it early (stop, lease lost, failure)."""
    try:
        yield
    finally:
        close = getattr(pages, "aclose", None)
        if close is not None:
            await close()


async def _next_or_none(pages: AsyncIterator[RawPage]) -> RawPage | None:
    try:
        return await anext(pages)
    except StopAsyncIteration:
        return None


async def _next_page(
    pages: AsyncIterator[RawPage], stop: asyncio.Event
) -> RawPage | _Signal | None:
    """The next page, ``None`` at the end, or ``_Signal.STOP`` if ``stop`` was set while waiting.

    A page not yet received holds nothing (it is neither published nor checkpointed), so
    abandoning it at once keeps a shutdown inside the drain timeout even while MATI is
    being retried with back-off.
    """
    if stop.is_set():
        return _Signal.STOP
    fetch = asyncio.create_task(_next_or_none(pages))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if fetch.done():
            return fetch.result()
        return _Signal.STOP
    finally:
        for task in (fetch, stopped):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _describe(exc: BaseException) -> str:
    """Class and message; adapters keep secrets out of their messages (shared.core.errors)."""
    return f"{type(exc).__name__}: {exc}"[:500]
