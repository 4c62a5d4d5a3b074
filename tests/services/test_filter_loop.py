"""The filter's loop and service: it forwards until stopped, waits out an unreachable state
without completing anything, refuses another destination's state, and ``main.loop`` wires the
settings to it."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.filter.config import FilterConfig
from services.filter.main import loop
from services.filter.worker import FilterWorker
from services.runtime import Runtime
from shared.adapters.destination_state import DestinationState
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.workspace_state import Born, WorkspaceState
from shared.contract.messages import INDICATORS
from shared.core.errors import StateUnavailable
from shared.core.settings import Service, load_settings
from tests.helpers import wait_for
from tests.services.filter_rig import (
    DEST,
    SOURCE,
    STIX,
    Rig,
    assert_settled,
    of_type,
    passing,
    publish,
    take,
    uploads,
)


@pytest.mark.parametrize("lanes", [1, 2])
async def test_run_forwards_until_stopped_and_then_returns(rig: Rig, lanes: int) -> None:
    """With two lanes a batch is received while the other is handled: once stopped, a batch
    received by either is handled too, so nothing is left locked."""
    worker = rig.worker(receive_wait_s=0.2, lanes=lanes)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    record = passing(of_type("ipv4"))
    await publish(rig.bus, record)
    got = await wait_for(lambda: uploads(rig.bus), 10, what="the forwarded upload")
    assert [r.indicator_id for r in got] == [record["id"]]
    stop.set()
    async with asyncio.timeout(5):
        await task
    await assert_settled(rig)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Watcher(logging.Handler):
    """Sets ``seen`` once ``event`` was logged ``times`` times."""

    def __init__(self, event: str, *, times: int, seen: asyncio.Event) -> None:
        super().__init__(logging.DEBUG)
        self.event, self.left, self.seen = event, times, seen

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.event:
            self.left -= 1
            if self.left <= 0:
                self.seen.set()


async def test_unavailable_state_is_waited_out_without_completing_anything(rig: Rig) -> None:
    """The seen cache's Redis is down (a real client on a closed port): the loop logs, backs
    off and retries when the message's lock expired (short here); the raw message is neither
    completed nor forwarded, and stop still works."""
    bus = RedisStreamsBus(rig.redis, consumer="filter-1", lock_duration_s=0.3)
    down: Redis = Redis.from_url(
        f"redis://127.0.0.1:{closed_port()}", socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        worker = FilterWorker(
            FilterConfig(DEST, stix_policy=STIX, receive_wait_s=0.1),
            bus=bus,
            state=DestinationState(down, DEST),
            rng=random.Random(1),
        )
        await publish(rig.bus, passing(of_type("ipv4")))
        stop, retried = asyncio.Event(), asyncio.Event()
        watcher = Watcher("filter.unavailable", times=2, seen=retried)
        logging.getLogger("services.filter.worker").addHandler(watcher)
        try:
            task = asyncio.create_task(worker.run(stop))
            async with asyncio.timeout(15):
                await retried.wait()
        finally:
            logging.getLogger("services.filter.worker").removeHandler(watcher)
        assert not task.done()
        stop.set()
        async with asyncio.timeout(5):
            await task
    finally:
        await down.aclose()
    counts = await rig.bus.counts(SOURCE)
    assert (counts.depth + counts.in_flight, counts.dead_letter) == (1, 0)
    assert await uploads(rig.bus) == []


def test_the_worker_refuses_a_state_of_another_destination(rig: Rig) -> None:
    with pytest.raises(ValueError, match="destination"):
        FilterWorker(
            FilterConfig(DEST, stix_policy=STIX),
            bus=rig.bus,
            state=DestinationState(rig.redis, "other"),
        )


async def test_the_service_loop_wires_settings_to_the_worker(redis_client: Redis) -> None:
    """``main.loop`` as ``run_service`` calls it: it creates the subscription and the queue,
    filters with the settings' policies (here: only fqdn), and returns once stopped."""
    settings = load_settings(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "DESTINATION": DEST, "INCLUDE_IPV4": "false"},
        Service.FILTER,
    )
    bus = RedisStreamsBus(redis_client, consumer="filter-main", lock_duration_s=5.0)
    await born(redis_client)
    runtime = Runtime(settings, Service.FILTER, "filter-main", redis_client, bus, asyncio.Event())
    task = asyncio.create_task(loop(runtime))
    await wait_for(  # the loop registers the subscription before it receives
        lambda: redis_client.sismember(bus.subscriptions_key(INDICATORS.name), DEST),
        10,
        what="the subscription registered",
    )
    fqdn = passing(of_type("fqdn"))
    await publish(bus, passing(of_type("ipv4")), fqdn)
    got = await wait_for(lambda: uploads(bus), 10, what="the fqdn's upload")
    assert [r.indicator_id for r in got] == [fqdn["id"]]
    runtime.stop.set()
    async with asyncio.timeout(5):
        await task
    assert (await DestinationState(redis_client, DEST).counters())["dropped_type_excluded"] == 1


async def born(redis: Redis) -> None:
    """What the uploader's cache guard writes once the seen cache is trusted."""
    state = WorkspaceState(redis, DestinationState(redis, DEST))
    await state.mark_born(Born.REBUILT, at=datetime.now(UTC), objects=0)


async def test_the_filter_holds_while_the_seen_cache_is_not_born(redis_client: Redis) -> None:
    """``CACHE_REBUILD=auto`` (the default): with the destination's state empty, as after a
    lost Redis, the filter decides nothing (judged against an empty cache, every live
    indicator would be uploaded again) until the state is born; then it goes on."""
    settings = load_settings(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "DESTINATION": DEST}, Service.FILTER
    )
    assert FilterConfig.from_settings(settings).hold_until_born
    bus = RedisStreamsBus(redis_client, consumer="filter-main", lock_duration_s=0.5)
    runtime = Runtime(settings, Service.FILTER, "filter-main", redis_client, bus, asyncio.Event())
    holding = asyncio.Event()
    watcher = Watcher("filter.holding", times=1, seen=holding)
    logging.getLogger("services.filter.worker").addHandler(watcher)
    try:
        task = asyncio.create_task(loop(runtime))
        async with asyncio.timeout(10):
            await holding.wait()
        await wait_for(
            lambda: redis_client.sismember(bus.subscriptions_key(INDICATORS.name), DEST),
            10,
            what="the subscription registered",
        )
        first = passing(of_type("fqdn"))
        await publish(bus, first)
        assert await uploads(bus) == []
        counts = await bus.counts(SOURCE)
        assert counts.depth == 1, "held: not even received"
        await born(redis_client)
        got = await wait_for(lambda: uploads(bus), 10, what="the upload after birth")
        assert [r.indicator_id for r in got] == [first["id"]]
    finally:
        logging.getLogger("services.filter.worker").removeHandler(watcher)
    runtime.stop.set()
    async with asyncio.timeout(5):
        await task


async def test_a_batch_meeting_a_lost_state_is_neither_decided_nor_settled(rig: Rig) -> None:
    """Redis lost while the filter runs (a failover without persistence): the batch's
    ``batch_view`` finds the state not born; the batch raises ``StateUnavailable`` with nothing
    forwarded, claimed or completed, so it comes back once the cache is rebuilt."""
    worker = rig.worker(hold_until_born=True)
    await publish(rig.bus, passing(of_type("fqdn")))
    deliveries = await take(rig.bus, SOURCE, 1)
    with pytest.raises(StateUnavailable, match="rebuilt"):
        await worker.handle(deliveries)
    assert await uploads(rig.bus) == []
    counts = await rig.bus.counts(SOURCE)
    assert (counts.depth + counts.in_flight, counts.dead_letter) == (1, 0)
    assert await rig.state.counters() == {}
    await born(rig.redis)
    outcome = await worker.handle(deliveries)
    assert outcome["forwarded"] == 1
