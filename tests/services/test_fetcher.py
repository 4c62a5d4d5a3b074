"""The fetcher against real parts: the MATI simulator over TLS, a real Redis, the real
RedisStreamsBus and the real FeedState / FetcherLease.

What each test checks is what was *published* (drained from the destination's subscription)
and what was *checkpointed*, against ``Feed.window`` for the query the simulator recorded, so
no test trusts the fetcher's own account of what it did.

Time: the fetcher's clock is a settable ``Clock`` (so windows are exact); the MATI client's
back-off sleeps are fake (``FakeTime``), so a 5xx storm costs no wall time. The simulator
keeps the real clock (its 90-day guard and cursor life), except where a test moves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import pytest
from redis.asyncio import Redis

from services.fetcher.config import OVERLAP, FetcherConfig
from services.fetcher.main import loop, next_delay_s, sync_once
from services.fetcher.sync import (
    MATI_RETENTION,
    RETENTION_MARGIN,
    Fetcher,
    Outcome,
    SyncSummary,
    new_run_id,
)
from services.runtime import Runtime
from shared.adapters.feed_state import FeedState, FetcherLease
from shared.adapters.http import open_session
from shared.adapters.mati_client import MatiClient
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Bus, Delivery, Message, Target
from shared.contract.messages import INDICATORS, raw_message, subscription
from shared.core.errors import BusUnavailable
from shared.core.parsing import parse_timestamp
from shared.core.secrets import Secret
from shared.core.settings import Service, Settings
from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.mati import MatiSimulator
from tests.helpers import FakeTime, wait_for

pytestmark = pytest.mark.timeout(30)

KEY = "sim-mati-key"
SECRET = "sim-mati-secret"
DEST = "acme"
#: An hour before the real time: the simulator's 90-day guard runs on the real clock.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
LOOKBACK = timedelta(days=10)
CONFIG = FetcherConfig(
    destination=DEST,
    initial_lookback=LOOKBACK,
    minimum_confidence=50,
    exclude_osint=True,
    page_size=50,
)


class Clock:
    """The fetcher's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


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


@dataclass
class World:
    feed: Feed
    mati: MatiSimulator
    client: MatiClient
    fake: FakeTime
    redis: Redis
    bus: RedisStreamsBus
    state: FeedState
    clock: Clock

    def fetcher(
        self,
        *,
        owner: str = "fetcher-a",
        bus: Bus | None = None,
        config: FetcherConfig = CONFIG,
    ) -> Fetcher:
        return Fetcher(
            client=self.client,
            bus=bus or self.bus,
            feed=self.state,
            lease=FetcherLease(self.redis, owner=owner, ttl_s=5),
            config=config,
            clock=self.clock,
        )

    async def sync(
        self, fetcher: Fetcher | None = None, stop: asyncio.Event | None = None
    ) -> SyncSummary:
        return await (fetcher or self.fetcher()).sync(new_run_id(), stop or asyncio.Event())

    async def drain(self) -> list[Delivery]:
        """Everything waiting in the destination's subscription, completed."""
        source = subscription(DEST)
        out: list[Delivery] = []
        while True:
            batch = await self.bus.receive(source, max_messages=1000, max_wait_s=0)
            if not batch:
                return out
            out += batch
            await self.bus.complete(source, batch)

    def first_queries(self) -> list[dict[str, str]]:
        """The query of every window the fetcher opened (follow-up pages carry ``next``)."""
        return [
            r.query
            for r in self.mati.recorder.of("indicator")
            if "start_epoch" in r.query and r.status == 200
        ]

    def expected(self, query: dict[str, str]) -> list[str]:
        """Ids MATI serves for ``query``, in order."""
        indexes = self.feed.window_ms(
            int(query["start_epoch"]) * 1000,
            int(query["end_epoch"]) * 1000,
            gte_mscore=int(query["gte_mscore"]),
            exclude_osint=query["exclude_osint"] == "true",
        )
        return [self.feed.id(i) for i in indexes]

    async def checkpoint(self) -> datetime | None:
        saved = await self.state.checkpoint()
        return None if saved is None else saved.last_updated


@contextlib.asynccontextmanager
async def world(
    server_ssl: Any,
    client_ssl: Any,
    redis: Redis,
    *,
    count: int = 600,
    sim_clock: Callable[[], float] = time.time,
    **sim: Any,
) -> AsyncIterator[World]:
    feed = Feed(seed=11, count=count, days=20, now=T0)
    fake = FakeTime()
    async with (
        MatiSimulator(
            server_ssl, feed=feed, api_key=KEY, api_secret=SECRET, clock=sim_clock, **sim
        ) as mati,
        open_session(client_ssl, timeout_s=10) as session,
    ):
        client = MatiClient(
            session,
            base_url=mati.url,
            api_key=Secret(KEY),
            api_secret=Secret(SECRET),
            requests_per_second=float("inf"),
            sleep=fake.sleep,
            clock=fake.clock,
        )
        bus = RedisStreamsBus(redis, consumer="test-drain", lock_duration_s=5)
        # The destination's filter would have ensured its subscription; the fetcher does too.
        await bus.ensure(subscription(DEST))
        yield World(
            feed, mati, client, fake, redis, bus, FeedState(redis), Clock(T0 + timedelta(minutes=1))
        )


def ids(deliveries: Iterable[Delivery]) -> list[str]:
    return [d.properties["indicator_id"] for d in deliveries]


def newest(deliveries: Iterable[Delivery]) -> datetime:
    """Max ``last_updated`` of what was published, truncated to ms like the checkpoint."""
    stamps = [parse_timestamp(orjson.loads(d.body).get("last_updated")) for d in deliveries]
    top = max(s for s in stamps if s is not None)
    return top.replace(microsecond=top.microsecond // 1000 * 1000)


def message_id(feed: Feed, indicator_id: str) -> str:
    """The message id the current version of ``indicator_id`` is published under."""
    return raw_message(feed.record(feed.index_of(indicator_id)), run_id="x").message_id


def assert_unique(deliveries: Sequence[Delivery]) -> None:
    message_ids = [d.message_id for d in deliveries]
    assert len(message_ids) == len(set(message_ids)), "a message was delivered twice"


# ------------------------------------------------------------------------------------------


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
        assert query["gte_mscore"] == "40"
        assert query["exclude_osint"] == "true"
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
        assert summary.pages == 2
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
        assert counters["pages"] == 2
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


class CursorExpiry:
    """The simulator's clock: jumps past the cursor's life once the second page was answered,
    i.e. after the cursor for page 3 was issued and before it is used — as if the fetcher had
    been stalled for 11 minutes between two pages."""

    def __init__(self) -> None:
        self.mati: MatiSimulator | None = None

    def __call__(self) -> float:
        served = len(self.mati.recorder.of("indicator")) if self.mati else 0
        return time.time() + (660.0 if served >= 2 else 0.0)


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
    config = FetcherConfig(DEST, LOOKBACK, 50, True, page_size=20)
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
    config = FetcherConfig(DEST, LOOKBACK, 50, True, page_size=20)
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


# ------------------------------------------------------------------------------------------
# The composition root: loop() and sync_once() over a Runtime, as run_service builds it.


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
