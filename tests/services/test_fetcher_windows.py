"""Which window the fetcher asks MATI for (the lookback, the checkpoint less the overlap, the
oldest MATI still serves) and that everything in it is published once, in order."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from services.fetcher.config import MATI_RETENTION, OVERLAP, RETENTION_MARGIN, FetcherConfig
from services.fetcher.sync import Outcome
from shared.adapters.feed_state import FetcherLease
from shared.core.settings import Settings
from tests.services.fetcher_rig import (
    CONFIG,
    DEST,
    LOOKBACK,
    T0,
    assert_unique,
    ids,
    message_id,
    newest,
    world,
)

pytestmark = pytest.mark.timeout(30)


async def test_first_sync_publishes_the_lookback_window_once(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    settings = Settings(
        destination=DEST, initial_lookback=10, minimum_confidence=40, exclude_osint=True
    )
    config = FetcherConfig.from_settings(settings)
    async with world(server_ssl, client_ssl, redis_client, count=5000) as w:
        summary = await w.sync(w.fetcher(config=config))
        delivered = await w.drain()

        (query,) = w.first_queries()
        assert query["sort_by"] == "last_updated:asc"
        assert query["limit"] == "1000"
        # Not pushed down: a record that falls below a minimum must still come, to be revoked.
        assert "gte_mscore" not in query
        assert "exclude_osint" not in query
        assert query["start_epoch"] == str(math.floor((w.clock.now - LOOKBACK).timestamp()))
        assert query["end_epoch"] == str(math.ceil(w.clock.now.timestamp()))
        for flag in ("include_threat_rating", "include_category", "include_campaigns"):
            assert query[flag] == "true"
        assert query["include_misp"] == query["include_reports"] == "false"
        # The cursor keeps the query but not the include_* flags: every page sends them.
        for request in w.mati.recorder.of("indicator"):
            assert request.query["include_threat_rating"] == "true"

        expected = w.expected(query)
        assert len(expected) > 1000  # more than one page at MATI's page size
        assert ids(delivered) == expected  # every one, once, in last_updated order
        assert_unique(delivered)
        assert await w.checkpoint() == newest(delivered)

        assert summary.outcome is Outcome.COMPLETED
        assert summary.pages == math.ceil(len(expected) / 1000)
        assert summary.fetched == summary.published == len(expected)
        assert summary.window_end == w.clock.now
        assert summary.checkpoint == newest(delivered)
        last_run = await w.state.last_run()
        assert last_run is not None
        assert last_run["run_id"] == summary.run_id
        assert last_run["outcome"] == "completed"
        assert last_run["published"] == len(expected)
        counters = await w.state.counters()
        assert counters["published"] == counters["fetched"] == len(expected)
        assert counters["pages"] == summary.pages
        assert counters["sync_completed"] == 1
        assert await FetcherLease(redis_client, owner="x").holder() is None  # released


async def test_second_sync_starts_at_checkpoint_minus_overlap_and_publishes_changes(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client) as w:
        await w.sync()
        first = await w.drain()
        checkpoint = await w.checkpoint()
        assert checkpoint is not None

        changed_at = T0 + timedelta(minutes=2)
        mutated = w.feed.mutate(0.05, seed=3, now=changed_at)
        rereported = w.feed.rereport(ids(first)[:5], now=changed_at)
        w.clock.now = T0 + timedelta(minutes=3)
        summary = await w.sync()
        second = await w.drain()

        query = w.first_queries()[-1]
        assert query["start_epoch"] == str(math.floor((checkpoint - OVERLAP).timestamp()))
        window = w.expected(query)
        assert summary.published == len(window)
        already = {d.message_id for d in first}
        republished = {i for i in window if message_id(w.feed, i) in already}
        assert republished, "the overlap re-published at least the checkpoint's own record"
        # What the overlap re-published was dropped by duplicate detection; the rest arrived.
        assert set(ids(second)) == set(window) - republished
        assert set(rereported) <= set(ids(second))
        assert {i for i in mutated if i in window} <= set(ids(second))
        assert_unique(first + second)
        assert await w.checkpoint() == changed_at


async def test_a_checkpoint_older_than_mati_serves_is_clamped_not_rejected(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    # The simulator's 90-day guard must run on the fetcher's clock: the module's T0 was taken
    # at import, minutes before this test may run in a full suite.
    fetcher_now = (T0 + timedelta(minutes=1)).timestamp()
    async with world(server_ssl, client_ssl, redis_client, sim_clock=lambda: fetcher_now) as w:
        await w.state.advance(w.clock.now - timedelta(days=120), "an-old-run")
        summary = await w.sync()

        assert summary.outcome is Outcome.COMPLETED
        (query,) = w.first_queries()
        oldest = w.clock.now - MATI_RETENTION + RETENTION_MARGIN
        assert query["start_epoch"] == str(math.floor(oldest.timestamp()))
        assert ids(await w.drain()) == w.expected(query)


async def test_warning_list_flags_are_asked_for_on_every_page_only_when_excluded(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    settings = Settings(destination=DEST, exclude_warninglists=frozenset({"rfc1918"}))
    config = replace(FetcherConfig.from_settings(settings), page_size=CONFIG.page_size)
    async with world(server_ssl, client_ssl, redis_client) as w:
        await w.sync(w.fetcher(config=config))
        delivered = await w.drain()

        requests = w.mati.recorder.of("indicator")
        assert len(requests) > 1
        assert all(r.query["include_misp"] == "true" for r in requests)
        assert delivered
        assert all("misp" in orjson.loads(d.body) for d in delivered)
