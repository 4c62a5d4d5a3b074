"""When a sync goes wrong (the bus refuses a page, a cursor expires, MATI is down, records are
broken) the checkpoint stays at what was really published and the next run loses nothing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import orjson
import pytest
from redis.asyncio import Redis

from services.fetcher.config import OVERLAP
from services.fetcher.sync import Outcome
from shared.adapters.feed_state import FetcherLease
from shared.contract.bus import Bus, Message, Target
from shared.core.errors import BusUnavailable
from simulators.faults import FaultKind
from tests.services.fetcher_rig import CONFIG, CursorExpiry, assert_unique, ids, newest, world

pytestmark = pytest.mark.timeout(30)


class FailingBus:
    """The real bus, except that publish call number ``fail_on`` raises ``BusUnavailable``.

    A wrapper because no simulator can do this: the bus is Redis itself, and killing Redis
    would also take the checkpoint with it, while this test needs the bus to refuse exactly
    one page and the state to stay reachable, to show the checkpoint stays at the page before.
    """

    def __init__(self, bus: Bus, fail_on: int) -> None:
        self._bus = bus
        self._fail_on = fail_on
        self.publishes = 0

    async def publish(self, target: Target, messages: Sequence[Message]) -> None:
        self.publishes += 1
        if self.publishes == self._fail_on:
            raise BusUnavailable("simulated: the bus refused the publish")
        await self._bus.publish(target, messages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)


async def test_checkpoint_stays_at_the_last_confirmed_page_when_publishing_fails(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client) as w:
        failing = FailingBus(w.bus, fail_on=2)
        summary = await w.sync(w.fetcher(bus=cast(Bus, failing)))
        first = await w.drain()

        assert summary.outcome is Outcome.FAILED
        assert summary.error is not None
        assert "BusUnavailable" in summary.error
        assert summary.pages == 1
        window = w.expected(w.first_queries()[0])
        assert ids(first) == window[: CONFIG.page_size]
        checkpoint = await w.checkpoint()
        assert checkpoint == newest(first)
        assert (await w.state.counters())["sync_failed"] == 1

        # The next run resumes from the confirmed page and publishes the rest.
        summary = await w.sync()
        rest = await w.drain()
        assert summary.outcome is Outcome.COMPLETED
        assert checkpoint is not None
        resumed = w.first_queries()[-1]
        assert resumed["start_epoch"] == str(math.floor((checkpoint - OVERLAP).timestamp()))
        assert ids(first) + ids(rest) == window
        assert_unique(first + rest)
        assert await w.checkpoint() == newest(first + rest)


async def test_an_expired_cursor_restarts_the_window_from_the_checkpoint(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    expiry = CursorExpiry()
    async with world(server_ssl, client_ssl, redis_client, sim_clock=expiry) as w:
        expiry.mati = w.mati
        summary = await w.sync()
        delivered = await w.drain()

        statuses = [r.status for r in w.mati.recorder.of("indicator")]
        assert statuses[:3] == [200, 200, 400]  # page 3's cursor had expired
        assert summary.outcome is Outcome.COMPLETED
        assert summary.restarts == 1
        original, restarted = w.first_queries()
        assert restarted["end_epoch"] == original["end_epoch"]
        two_pages = w.expected(original)[: 2 * CONFIG.page_size]
        page_two_newest = w.feed.last_updated(w.feed.index_of(two_pages[-1]))
        assert restarted["start_epoch"] == str(math.floor((page_two_newest - OVERLAP).timestamp()))
        assert ids(delivered) == w.expected(original)  # everything, once
        assert_unique(delivered)
        assert await w.checkpoint() == newest(delivered)
        assert (await w.state.counters())["cursor_restarts"] == 1


async def test_a_mati_outage_beyond_the_client_retries_fails_the_sync_not_the_process(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client) as w:
        w.mati.faults.inject(FaultKind.SERVER_ERROR, route="indicator", times=100, after=1)
        summary = await w.sync()
        first = await w.drain()

        assert summary.outcome is Outcome.FAILED
        assert summary.error is not None
        assert "UpstreamUnavailable" in summary.error
        assert summary.pages == 1
        assert len(w.fake.sleeps) >= 3  # the client did retry before giving up
        checkpoint = await w.checkpoint()
        assert checkpoint == newest(first)
        last_run = await w.state.last_run()
        assert last_run is not None
        assert last_run["outcome"] == "failed"
        assert await FetcherLease(redis_client, owner="x").holder() is None

        w.mati.faults.clear()
        summary = await w.sync()
        rest = await w.drain()
        assert summary.outcome is Outcome.COMPLETED
        assert ids(first) + ids(rest) == w.expected(w.first_queries()[0])
        assert_unique(first + rest)


async def test_pages_with_broken_records_are_published_whole(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client, inject_bad_records=7) as w:
        w.mati.faults.inject(FaultKind.PARTIAL_ERRORS, route="indicator", record_indexes=(42,))
        summary = await w.sync()
        delivered = await w.drain()

        window = w.expected(w.first_queries()[0])
        assert summary.outcome is Outcome.COMPLETED
        assert summary.published == len(delivered) == len(window)
        assert_unique(delivered)
        kinds = [b.kind for b in w.mati.bad_records]
        assert len(kinds) == 7 * summary.pages + 1  # 7 a page, and the fault's one
        bodies = [orjson.loads(d.body) for d in delivered]
        assert sum(1 for b in bodies if "id" not in b) == kinds.count("missing_id")
        undated = sum(1 for b in bodies if b.get("last_updated") == "yesterday")
        assert undated == kinds.count("bad_last_updated") > 0
        # Undated records do not move the checkpoint; the dated ones do.
        assert await w.checkpoint() == newest(delivered)
        assert (await w.state.counters())["without_last_updated"] == undated
