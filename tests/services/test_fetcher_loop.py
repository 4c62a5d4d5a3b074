"""The composition root: loop() and sync_once() over a Runtime, as run_service builds it, so the
schedule, the wait for a running sync and the retry delays are tested as they run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from services.fetcher.main import build, loop, next_delay_s, standby_delay_s, sync_once
from services.fetcher.sync import Outcome, SyncSummary
from services.runtime import Runtime
from shared.adapters.feed_state import FetcherLease
from shared.adapters.http import open_session
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.messages import INDICATORS
from shared.core.secrets import Secret
from shared.core.settings import Service, Settings
from tests.helpers import wait_for
from tests.services.fetcher_rig import DEST, KEY, SECRET, T0, World, ids, world

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def root(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> AsyncIterator[tuple[World, Runtime]]:
    """A world and the Runtime that run_service would build over it."""
    async with world(server_ssl, client_ssl, redis_client) as w:
        settings = Settings(
            mati_api_key=Secret(KEY),
            mati_api_secret=Secret(SECRET),
            mati_base_url=w.mati.url,
            mati_requests_per_second=1000.0,
            initial_lookback=10,
            minimum_confidence=50,
            destination=DEST,
            sync_schedule=1.0,
        )
        async with open_session(client_ssl, timeout_s=10) as session:
            runtime = Runtime(
                settings=settings,
                service=Service.FETCHER,
                consumer="fetcher-root",
                redis=w.redis,
                bus=RedisStreamsBus(w.redis, consumer="fetcher-root"),
                stop=asyncio.Event(),
                http=session,
            )
            yield w, runtime


async def test_the_loop_syncs_at_start_then_sleeps_until_stopped(
    root: tuple[World, Runtime],
) -> None:
    w, rt = root
    task = asyncio.create_task(loop(rt))

    async def synced() -> bool:
        return await w.state.last_run() is not None

    await wait_for(synced)
    rt.stop.set()
    await asyncio.wait_for(task, timeout=5)  # the schedule's sleep is interrupted
    run = await w.state.last_run()
    assert run is not None
    assert run["outcome"] == "completed"
    delivered = await w.drain()
    assert ids(delivered) == w.expected(w.first_queries()[0])
    assert len(w.first_queries()) == 1  # one sync; the next is an hour away


async def test_sync_once_waits_for_a_running_sync_then_syncs(
    root: tuple[World, Runtime], redis_client: Redis
) -> None:
    w, rt = root
    active = FetcherLease(redis_client, owner="fetcher-active")
    assert await active.acquire()
    task = asyncio.create_task(sync_once(rt, lease_wait_s=20, poll_s=0.05))

    async def standing_by() -> bool:
        return (await w.state.counters()).get("sync_standby", 0) >= 1

    await wait_for(standing_by)
    await active.release()
    summary = await task
    assert summary.outcome is Outcome.COMPLETED
    assert ids(await w.drain()) == w.expected(w.first_queries()[0])


async def test_sync_once_gives_up_waiting_for_the_lease(
    root: tuple[World, Runtime], redis_client: Redis
) -> None:
    w, rt = root
    assert await FetcherLease(redis_client, owner="fetcher-active").acquire()
    summary = await sync_once(rt, lease_wait_s=0.2, poll_s=0.05)
    assert summary.outcome is Outcome.STANDBY
    assert w.mati.recorder.of("indicator") == []


def test_failed_syncs_retry_sooner_than_the_schedule() -> None:
    def summary(outcome: Outcome) -> SyncSummary:
        return SyncSummary("r", outcome, None, None, 0, 0, 0, 0, None, T0, T0)

    schedule = 4 * 3600.0
    assert next_delay_s(summary(Outcome.COMPLETED), schedule, 0) == schedule
    assert next_delay_s(summary(Outcome.FAILED), schedule, 1) == 300
    assert next_delay_s(summary(Outcome.FAILED), schedule, 2) == 600
    assert next_delay_s(summary(Outcome.FAILED), schedule, 10) == schedule
    assert next_delay_s(summary(Outcome.STANDBY), schedule, 0) == schedule
    assert INDICATORS.name == "indicators"


async def test_a_standby_takes_over_a_dead_fetchers_sync_when_its_lease_runs_out(
    root: tuple[World, Runtime], redis_client: Redis
) -> None:
    """A fetcher killed mid-sync leaves its lease to expire and its window half fetched (the
    checkpoint moved after the last sync finished): its successor, in standby at start, tries
    again when the lease runs out and fetches the rest, not a whole schedule (here an hour)
    later."""
    w, rt = root
    finished = datetime.now(UTC) - timedelta(minutes=10)
    await w.state.record_run({"outcome": "completed", "finished_at": finished.isoformat()})
    await w.state.advance(T0, "the-dead-fetchers-run")  # saved now: after that sync finished
    dead = FetcherLease(redis_client, owner="fetcher-dead", ttl_s=1.5)
    assert await dead.acquire()
    task = asyncio.create_task(loop(rt))

    async def took_over() -> bool:
        run = await w.state.last_run()
        return run is not None and run.get("run_id") is not None and run["outcome"] == "completed"

    await wait_for(took_over, 15, what="the standby's own sync")
    rt.stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert len(w.first_queries()) == 1


async def test_a_standby_waits_for_the_next_due_sync_once_the_holders_sync_finished(
    root: tuple[World, Runtime], redis_client: Redis
) -> None:
    w, rt = root
    fetcher = build(rt)
    await w.state.advance(T0, "earlier")  # the checkpoint moved, then the sync finished
    finished = datetime.now(UTC)
    await w.state.record_run({"outcome": "completed", "finished_at": finished.isoformat()})
    schedule_s = 3600.0
    assert 3590 < await standby_delay_s(fetcher, schedule_s) <= 3600
    # While another fetcher's sync runs (its checkpoint moved since): when its lease may end.
    await w.state.advance(T0 + timedelta(hours=1), "running")
    holder = FetcherLease(redis_client, owner="fetcher-live", ttl_s=20)
    assert await holder.acquire()
    assert 19 < await standby_delay_s(fetcher, schedule_s) <= 21
