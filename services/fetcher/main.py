"""The fetcher's composition root: a sync at start, then one every ``SYNC_SCHEDULE`` hours.

``python -m services.fetcher`` (or ``mati2sentinel fetcher``) runs :func:`main`;
``mati2sentinel sync --once`` runs :func:`sync_main`, which does one sync now and exits once
its last page is published and checkpointed.

A failed sync (MATI down, Redis unreachable, credentials refused) is retried sooner than the
schedule, with doubling back-off capped at the schedule: a 4-hour gap after one bad minute
would be a long hole in the feed, and an endless tight retry a crash loop in disguise.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any, Final

from aiohttp import ClientSession

from services.fetcher.config import FetcherConfig
from services.fetcher.sync import Fetcher, Outcome, SyncSummary, new_run_id
from services.runtime import Runtime, run_service
from shared.adapters.feed_state import FeedState, FetcherLease
from shared.adapters.mati_client import MatiClient
from shared.core.errors import ConfigError, PipelineError
from shared.core.settings import Service, Settings
from shared.core.timing import UtcClock, aware_timestamp, sleep_unless_stopped, utc_now
from shared.telemetry import logs

log = logs.get_logger(__name__)

#: First retry after a failed sync; doubles per failure in a row, capped at the schedule.
FAILURE_RETRY: Final = timedelta(minutes=5)
#: How long ``sync --once`` waits for a running sync (another fetcher's) to release the lease.
LEASE_WAIT_S: Final = 120.0
#: How often ``sync --once`` asks for the lease while it waits.
LEASE_POLL_S: Final = 2.0
#: After a standby, how long past the holder's lease expiry to ask again.
LEASE_MARGIN_S: Final = 1.0


def mati_client(http: ClientSession, settings: Settings, **options: Any) -> MatiClient:
    """MATI as the fetcher's settings reach it; ``explain`` asks MATI through this too, so it
    sees the indicator at the URL, with the credentials and pace a sync would use.
    ``options`` are the client's other keyword arguments."""
    if not settings.mati_api_key or not settings.mati_api_secret:
        raise ConfigError(["MATI_API_KEY and MATI_API_SECRET are required by the fetcher"])
    return MatiClient(
        http,
        base_url=settings.mati_base_url,
        api_key=settings.mati_api_key,
        api_secret=settings.mati_api_secret,
        requests_per_second=settings.mati_requests_per_second,
        **options,
    )


def build(runtime: Runtime, *, clock: UtcClock = utc_now) -> Fetcher:
    """The fetcher over the runtime's connections and settings."""
    settings = runtime.settings
    if runtime.http is None:
        raise RuntimeError("the fetcher needs the runtime's HTTP session (http=True)")
    return Fetcher(
        client=mati_client(runtime.http, settings),
        bus=runtime.bus,
        feed=FeedState(runtime.redis),
        lease=FetcherLease(runtime.redis, owner=runtime.consumer),
        config=FetcherConfig.from_settings(settings, runtime.served().values()),
        clock=clock,
    )


def next_delay_s(summary: SyncSummary, schedule_s: float, failures_in_a_row: int) -> float:
    """Seconds from this sync's start to the next one's."""
    if summary.outcome is Outcome.FAILED and failures_in_a_row > 0:
        retry = FAILURE_RETRY.total_seconds() * 2.0 ** (failures_in_a_row - 1)
        return min(schedule_s, retry)
    return schedule_s


async def standby_delay_s(fetcher: Fetcher, schedule_s: float) -> float:
    """After a standby (another fetcher held the lease), when to try again.

    While a sync is unfinished (the checkpoint moved after the last sync finished, or no sync
    ever finished), as soon as the holder's lease may expire: a holder that died mid-sync
    leaves its lease to run out, and the rest of its window must be fetched then, not a whole
    schedule later. Once that sync finished, when the next one is due. A state that cannot be
    read means trying again soon, as after a failure."""
    now = fetcher.clock()
    soon = fetcher.lease.ttl_ms / 1000
    try:
        left = await fetcher.lease.expires_in_s()
        run = await fetcher.feed.last_run()
        checkpoint = await fetcher.feed.checkpoint()
    except PipelineError:
        return min(schedule_s, FAILURE_RETRY.total_seconds())
    if left is not None:
        soon = left + LEASE_MARGIN_S
    finished = aware_timestamp(run.get("finished_at")) if run is not None else None
    if finished is None or (checkpoint is not None and checkpoint.saved_at > finished):
        return min(schedule_s, soon)
    return max(soon, (finished - now).total_seconds() + schedule_s)


async def loop(runtime: Runtime) -> None:
    """Sync now, then every ``SYNC_SCHEDULE`` hours, until ``runtime.stop`` is set."""
    fetcher = build(runtime)
    schedule_s = runtime.settings.sync_schedule * 3600
    failures = 0
    while not runtime.stop.is_set():
        began = time.monotonic()
        summary = await fetcher.sync(new_run_id(), runtime.stop)
        failures = failures + 1 if summary.outcome is Outcome.FAILED else 0
        if summary.outcome is Outcome.STANDBY:
            wait_s = await standby_delay_s(fetcher, schedule_s)
        else:
            wait_s = next_delay_s(summary, schedule_s, failures)
        delay = max(0.0, began + wait_s - time.monotonic())
        if not runtime.stop.is_set():
            log.info("fetch.next_sync", in_s=round(delay, 1), after=summary.outcome.value)
        await sleep_unless_stopped(runtime.stop, delay)


async def sync_once(
    runtime: Runtime,
    *,
    full: bool = False,
    lease_wait_s: float = LEASE_WAIT_S,
    poll_s: float = LEASE_POLL_S,
) -> SyncSummary:
    """One sync now (``full``: of the whole live window); if another fetcher is syncing, wait
    up to ``lease_wait_s`` for it."""
    fetcher = build(runtime)
    run_id = new_run_id()
    deadline = time.monotonic() + lease_wait_s
    while True:
        summary = await fetcher.sync(run_id, runtime.stop, full=full)
        if (
            summary.outcome is not Outcome.STANDBY
            or runtime.stop.is_set()
            or time.monotonic() + poll_s > deadline
        ):
            return summary
        log.info("fetch.waiting_for_lease", wait_s=poll_s)
        await sleep_unless_stopped(runtime.stop, poll_s)


def main() -> int:
    return run_service(Service.FETCHER, loop, http=True)


def sync_main(*, full: bool = False) -> int:
    """``mati2sentinel sync --once [--full]``: 0 when the sync completed, 1 otherwise (also 2
    for bad settings, like every service). It serves no probes, so it binds no port and runs
    beside a fetcher, filter and uploader on the same host."""
    done: list[SyncSummary] = []

    async def once(runtime: Runtime) -> None:
        done.append(await sync_once(runtime, full=full))

    code = run_service(Service.FETCHER, once, http=True, probes=False)
    if code != 0 or not done:
        return code or 1
    summary = done[0]
    print(
        f"{'full sync' if full else 'sync'} {summary.run_id}: {summary.outcome.value}, "
        f"{summary.pages} pages, "
        f"{summary.fetched} fetched, {summary.published} published"
        + (f" ({summary.error})" if summary.error else ""),
        file=sys.stdout,
    )
    return 0 if summary.outcome is Outcome.COMPLETED else 1
