"""``sync --once --full``: after a settings change every indicator that can still be live must
be judged again, so a full sync pages the longest expiration whatever the checkpoint says,
gets past the bus's duplicate detection, and never moves the checkpoint back."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from services.fetcher.config import MATI_RETENTION, OVERLAP, RETENTION_MARGIN, FetcherConfig
from services.fetcher.sync import Outcome
from shared.core.settings import Settings
from tests.services.fetcher_rig import (
    CONFIG,
    LOOKBACK,
    CursorExpiry,
    assert_unique,
    ids,
    newest,
    world,
)

pytestmark = pytest.mark.timeout(30)

FULL = replace(CONFIG, full_window=LOOKBACK)


def test_the_full_window_is_the_longest_expiration_within_what_mati_serves() -> None:
    served = MATI_RETENTION - RETENTION_MARGIN
    days = {"ip_indicator_expiration": 7, "url_indicator_expiration": 30}
    assert FetcherConfig.from_settings(Settings(**days)).full_window == served  # hashes: 90
    short = Settings(**{**days, "hash_indicator_expiration": 14})
    assert FetcherConfig.from_settings(short).full_window == timedelta(days=30)
    longest = Settings(hash_indicator_expiration=365)
    assert FetcherConfig.from_settings(longest).full_window == served
    # Types the destination no longer takes count too: what it took before may still be
    # live, and the full sync after the change is what revokes it.
    no_hashes = Settings(**days, include_hash=False)
    assert FetcherConfig.from_settings(no_hashes).full_window == served
    alike = Settings(ip_indicator_expiration=9, fqdn_indicator_expiration=9)
    nine = replace(alike, url_indicator_expiration=9, hash_indicator_expiration=9)
    assert FetcherConfig.from_settings(replace(nine, include_hash=False)).full_window == (
        timedelta(days=9)
    )


async def test_a_full_sync_republishes_the_whole_window_and_keeps_the_checkpoint(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client) as w:
        await w.sync(w.fetcher(config=FULL))
        first = await w.drain()
        checkpoint = await w.checkpoint()
        assert checkpoint == newest(first)

        w.clock.now += timedelta(minutes=1)  # well inside the bus's duplicate window
        summary = await w.sync(w.fetcher(config=FULL), full=True)
        again = await w.drain()

        query = w.first_queries()[-1]
        assert query["start_epoch"] == str(math.floor((w.clock.now - LOOKBACK).timestamp()))
        # Every indicator arrives again, once, under ids of its own: a normal sync's overlap
        # would have been dropped as duplicates.
        assert ids(again) == w.expected(query)
        assert set(ids(again)) == set(ids(first))
        assert_unique(again)
        assert {d.message_id for d in again}.isdisjoint(d.message_id for d in first)
        assert await w.checkpoint() == checkpoint
        assert summary.outcome is Outcome.COMPLETED
        assert summary.full
        last_run = await w.state.last_run()
        assert last_run is not None
        assert last_run["full"] is True


async def test_a_full_sync_restarts_an_expired_cursor_from_its_own_progress(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    """The checkpoint lies ahead of a full sync's pages: restarting from it would skip the
    rest of the window."""
    expiry = CursorExpiry()
    async with world(server_ssl, client_ssl, redis_client, sim_clock=expiry) as w:
        await w.state.advance(w.clock.now - timedelta(minutes=1), "an-earlier-run")
        expiry.mati = w.mati
        summary = await w.sync(w.fetcher(config=FULL), full=True)
        delivered = await w.drain()

        assert summary.outcome is Outcome.COMPLETED
        assert summary.restarts == 1
        original, restarted = w.first_queries()
        two_pages = w.expected(original)[: 2 * CONFIG.page_size]
        page_two_newest = w.feed.last_updated(w.feed.index_of(two_pages[-1]))
        assert restarted["start_epoch"] == str(math.floor((page_two_newest - OVERLAP).timestamp()))
        assert ids(delivered) == w.expected(original)  # everything, once
        assert_unique(delivered)
