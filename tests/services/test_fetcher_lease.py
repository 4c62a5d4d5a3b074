"""One fetcher syncs at a time: a second stands by while the lease is held, and a fetcher told to
stop, or that lost its lease, ends after the page in hand with the checkpoint on whole pages."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from redis.asyncio import Redis

from services.fetcher.config import FetcherConfig
from services.fetcher.sync import Outcome
from shared.adapters.feed_state import FetcherLease
from tests.helpers import wait_for
from tests.services.fetcher_rig import DEST, LOOKBACK, assert_unique, ids, newest, world

pytestmark = pytest.mark.timeout(30)


async def test_a_second_fetcher_stands_by_while_another_holds_the_lease(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client) as w:
        active = FetcherLease(redis_client, owner="fetcher-active")
        assert await active.acquire()
        summary = await w.sync(w.fetcher(owner="fetcher-b"))

        assert summary.outcome is Outcome.STANDBY
        assert w.mati.recorder.of("indicator") == []
        assert await w.drain() == []
        assert await w.state.last_run() is None  # the active fetcher's record is not ours
        assert await active.holder() == "fetcher-active"
        assert (await w.state.counters())["sync_standby"] == 1

        await active.release()
        assert (await w.sync(w.fetcher(owner="fetcher-b"))).outcome is Outcome.COMPLETED


async def test_stop_mid_sync_returns_after_the_page_in_hand(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    config = FetcherConfig((DEST,), LOOKBACK, page_size=20)
    async with world(server_ssl, client_ssl, redis_client, page_latency_s=0.1) as w:
        stop = asyncio.Event()
        task = asyncio.create_task(w.sync(w.fetcher(config=config), stop))
        await wait_for(w.state.checkpoint)
        stop.set()
        summary = await task
        first = await w.drain()

        window = w.expected(w.first_queries()[0])
        assert summary.outcome is Outcome.STOPPED
        assert 1 <= summary.pages < math.ceil(len(window) / 20)
        assert ids(first) == window[: summary.published]  # whole pages, in order
        assert await w.checkpoint() == newest(first) == summary.checkpoint

        summary = await w.sync(w.fetcher(config=config))
        rest = await w.drain()
        assert summary.outcome is Outcome.COMPLETED
        assert ids(first) + ids(rest) == window
        assert_unique(first + rest)


async def test_a_fetcher_that_loses_its_lease_stops_after_the_page_in_hand(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    config = FetcherConfig((DEST,), LOOKBACK, page_size=20)
    async with world(server_ssl, client_ssl, redis_client, page_latency_s=0.1) as w:
        fetcher = w.fetcher(config=config)
        lease = FetcherLease(redis_client, owner="thief")
        task = asyncio.create_task(w.sync(fetcher))
        await wait_for(w.state.checkpoint)
        await redis_client.set(lease.key, "thief")  # the lease expired and another took it
        summary = await task
        first = await w.drain()

        assert summary.outcome is Outcome.LEASE_LOST
        assert ids(first) == w.expected(w.first_queries()[0])[: summary.published]
        assert await w.checkpoint() == newest(first)
        assert await lease.holder() == "thief"  # not released by the loser
