"""The fetcher's test rig, shared by the test_fetcher_*.py modules: the MATI simulator over TLS,
a real Redis, the real RedisStreamsBus and the real FeedState / FetcherLease.

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
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis

from services.fetcher.config import FetcherConfig
from services.fetcher.sync import Fetcher, SyncSummary, new_run_id
from shared.adapters.feed_state import FeedState, FetcherLease
from shared.adapters.http import open_session
from shared.adapters.mati_client import MatiClient
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Bus, Delivery
from shared.contract.messages import raw_message, subscription
from shared.core.parsing import parse_timestamp
from shared.core.secrets import Secret
from simulators.feed import Feed
from simulators.mati import MatiSimulator
from tests.helpers import FakeTime

KEY = "sim-mati-key"
SECRET = "sim-mati-secret"
DEST = "acme"
#: An hour before the real time: the simulator's 90-day guard runs on the real clock.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
LOOKBACK = timedelta(days=10)
CONFIG = FetcherConfig(
    destinations=(DEST,),
    initial_lookback=LOOKBACK,
    page_size=50,
)


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
        self,
        fetcher: Fetcher | None = None,
        stop: asyncio.Event | None = None,
        *,
        full: bool = False,
    ) -> SyncSummary:
        fetcher = fetcher or self.fetcher()
        return await fetcher.sync(new_run_id(), stop or asyncio.Event(), full=full)

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
        )
        return [self.feed.id(i) for i in indexes]

    async def checkpoint(self) -> datetime | None:
        saved = await self.state.checkpoint()
        return None if saved is None else saved.last_updated


class Clock:
    """The fetcher's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


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


class CursorExpiry:
    """The simulator's clock: jumps past the cursor's life once the second page was answered,
    i.e. after the cursor for page 3 was issued and before it is used — as if the fetcher had
    been stalled for 11 minutes between two pages."""

    def __init__(self) -> None:
        self.mati: MatiSimulator | None = None

    def __call__(self) -> float:
        served = len(self.mati.recorder.of("indicator")) if self.mati else 0
        return time.time() + (660.0 if served >= 2 else 0.0)
