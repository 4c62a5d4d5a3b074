"""Redis at its memory limit, on a real server: what ``read_memory`` reads of its policy (also
where ``CONFIG`` is refused, as on Azure Cache for Redis), the write probe behind readiness,
what an evicting policy really drops of our keys, and why an evicted fetcher lease cannot make
the checkpoint skip a page.

The server is this module's own: the tests set its ``maxmemory`` and policy, which must not
leak into the session's Redis that every other test shares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis, free_port
from services.fetcher.config import FetcherConfig
from services.fetcher.sync import Outcome
from services.runtime import warn_if_evicting
from shared.adapters.destination_state import DestinationState
from shared.adapters.feed_state import FeedState, FetcherLease
from shared.adapters.redis_connect import connect
from shared.adapters.redis_memory import RedisMemory, check_writes, probe_key, read_memory
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Message
from shared.contract.messages import upload_queue
from shared.core.errors import NotReady, StateUnavailable
from shared.core.events import fields_of
from shared.core.fingerprint import SeenEntry
from tests.helpers import wait_for
from tests.services.fetcher_rig import DEST, LOOKBACK, ids, newest, world
from tests.state.samples import FP_A, FP_B, server_now_close_to_ours
from tests.state.samples import ids as stix_ids

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    with LocalRedis(tmp_path_factory.mktemp("redis-memory")) as server:
        yield server


@pytest.fixture
async def redis(own_server: LocalRedis) -> AsyncIterator[Redis]:
    """A client on the module's Redis, emptied, with no limit and the default policy."""
    client: Redis = connect(own_server.url)
    await client.config_set("maxmemory", 0)
    await client.config_set("maxmemory-policy", "noeviction")
    await client.flushall()
    yield client
    await client.config_set("maxmemory", 0)
    await client.config_set("maxmemory-policy", "noeviction")
    await client.aclose()


# ---- reading the policy --------------------------------------------------------------------


async def test_the_policy_limit_and_use_are_read_from_the_server(redis: Redis) -> None:
    memory = await read_memory(redis)
    assert (memory.policy, memory.evicting, memory.maxmemory) == ("noeviction", False, 0)
    assert memory.used is not None
    assert memory.used > 0
    assert memory.used_ratio is None  # no limit: no ratio

    await redis.config_set("maxmemory-policy", "volatile-lru")
    await redis.config_set("maxmemory", 512 * 1024 * 1024)
    memory = await read_memory(redis)
    assert (memory.policy, memory.evicting, memory.maxmemory) == (
        "volatile-lru",
        True,
        512 * 1024 * 1024,
    )
    assert memory.used_ratio is not None
    assert 0 < memory.used_ratio < 1
    assert memory.to_dict()["evicting"] is True
    assert "seen entries" in memory.what_evicts()

    await redis.config_set("maxmemory-policy", "allkeys-lru")
    memory = await read_memory(redis)
    assert memory.evicting is True
    assert "queued messages" in memory.what_evicts()


async def test_without_config_the_policy_still_comes_from_info(
    redis: Redis, own_server: LocalRedis
) -> None:
    """Azure Cache for Redis refuses ``CONFIG``; an ACL that refuses it stands in for that.
    ``CONFIG`` answers for a server without ``INFO``; one that refuses both is "unknown",
    never an error that stops a start."""
    await redis.config_set("maxmemory-policy", "volatile-lru")
    refusing = {"azure-like": "-config", "no-info": "-info", "mute": "-config -info"}
    for user, denied in refusing.items():
        await redis.acl_setuser(
            user, enabled=True, passwords=[f"+{user}-pw"], keys=["*"],
            commands=["+@all", *denied.split()],
        )  # fmt: skip
    clients: dict[str, Redis] = {
        user: connect(f"redis://{user}:{user}-pw@127.0.0.1:{own_server.port}/0")
        for user in refusing
    }
    try:
        for user in ("azure-like", "no-info"):
            memory = await read_memory(clients[user])
            assert (memory.policy, memory.evicting, memory.maxmemory) == (
                "volatile-lru",
                True,
                0,
            ), user
        assert await read_memory(clients["mute"]) == RedisMemory(None, None, None)
        assert (await read_memory(clients["mute"])).evicting is None
    finally:
        for client in clients.values():
            await client.aclose()
        await redis.acl_deluser(*refusing)


async def test_a_redis_that_does_not_answer_is_unavailable_not_unknown() -> None:
    """The caller waits for it (the policy is read once Redis answers), as for every state."""
    silent: Redis = connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        with pytest.raises(StateUnavailable):
            await read_memory(silent)
    finally:
        await silent.aclose()


# ---- the warning at start -----------------------------------------------------------------


def policy_events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, dict[str, Any]]]:
    """``(event, level, fields)`` of what ``warn_if_evicting`` logged."""
    return [
        (r.getMessage(), r.levelname.lower(), fields_of(r))
        for r in caplog.records
        if r.getMessage().startswith("redis.")
    ]


async def test_an_evicting_policy_is_one_warning_naming_it_and_the_fix(
    redis: Redis, own_server: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await warn_if_evicting(redis, asyncio.Event())
    assert policy_events(caplog) == [("redis.policy", "info", {"maxmemory_policy": "noeviction"})]
    caplog.clear()

    await redis.config_set("maxmemory-policy", "volatile-lru")
    await warn_if_evicting(redis, asyncio.Event())
    ((event, level, fields),) = policy_events(caplog)
    assert (event, level, fields["maxmemory_policy"]) == ("redis.evicting_policy", "warning",
                                                         "volatile-lru")  # fmt: skip
    assert "set maxmemory-policy noeviction" in fields["fix"]
    assert "seen entries" in fields["effect"]
    caplog.clear()

    # A server that will not say (neither INFO nor CONFIG) is a warning too, not a failure.
    await redis.acl_setuser("mute", enabled=True, passwords=["+mute-pw"], keys=["*"],
                            commands=["+@all", "-config", "-info"])  # fmt: skip
    mute: Redis = connect(f"redis://mute:mute-pw@127.0.0.1:{own_server.port}/0")
    try:
        await warn_if_evicting(mute, asyncio.Event())
    finally:
        await mute.aclose()
        await redis.acl_deluser("mute")
    ((event, level, fields),) = policy_events(caplog)
    assert (event, level, fields["maxmemory_policy"]) == ("redis.policy_unknown", "warning",
                                                         "unknown")  # fmt: skip


async def test_the_policy_is_read_once_redis_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that starts after the service is waited for, never a failed start; a service
    stopped meanwhile stops waiting."""
    caplog.set_level(logging.INFO)
    port = free_port()
    client: Redis = connect(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    late = LocalRedis(tmp_path / "late", port=port)
    try:
        stop = asyncio.Event()
        waiting = asyncio.create_task(warn_if_evicting(client, stop))
        await wait_for(lambda: policy_events(caplog), 10, what="the first failed read")
        assert [event for event, _, _ in policy_events(caplog)] == ["redis.policy_unread"]
        await asyncio.to_thread(late.start)
        await wait_for(lambda: len(policy_events(caplog)) == 2, 10, what="the policy")
        await waiting
        assert policy_events(caplog)[1] == (
            "redis.policy",
            "info",
            {"maxmemory_policy": "noeviction"},
        )
        late.stop()
        caplog.clear()
        stop.set()
        await warn_if_evicting(client, stop)  # stopped: it tries once, then stops waiting
        assert [event for event, _, _ in policy_events(caplog)] == ["redis.policy_unread"]
    finally:
        late.stop()
        await client.aclose()


# ---- the write probe -----------------------------------------------------------------------


async def test_the_write_probe_is_refused_at_maxmemory_and_leaves_nothing(redis: Redis) -> None:
    key = probe_key("acme")
    assert key.startswith("m2s:{acme}:")  # the destination's slot
    assert probe_key(None).startswith("m2s:{fetcher}:")
    await check_writes(redis, key)
    assert await redis.exists(key) == 0  # XX: never created

    await redis.config_set("maxmemory", 1)  # noeviction: every write is refused now
    with pytest.raises(NotReady, match=r"redis refuses writes \(OOM"):
        await check_writes(redis, key)
    assert await redis.ping()  # while PING still answers: it cannot tell

    await redis.config_set("maxmemory", 0)
    await check_writes(redis, key)


# ---- what an evicting policy drops ---------------------------------------------------------


async def test_volatile_lru_evicts_seen_entries_claims_and_the_lease_only(redis: Redis) -> None:
    """Real eviction: ``maxmemory`` far below use under ``volatile-lru``. What has a TTL goes
    (re-uploads, a stopped sync); the checkpoint and the queues stay (nothing lost)."""
    now = server_now_close_to_ours()
    feed, dest = FeedState(redis), DestinationState(redis, DEST)
    lease = FetcherLease(redis, owner="fetcher-a")
    seen_id, claimed_id = stix_ids(2)
    assert await lease.acquire()
    assert await feed.advance(now - timedelta(hours=1), "run-1")
    await dest.commit([(seen_id, SeenEntry(FP_A, now + timedelta(days=30)))], now=now)
    assert await dest.claim([(claimed_id, FP_B)], ttl_s=3600) == [True]
    bus = RedisStreamsBus(redis, consumer="memory-test")
    await bus.ensure(upload_queue(DEST))
    await bus.publish(upload_queue(DEST), [Message(b"{}", "m1")])
    evicted_before = (await redis.info("stats"))["evicted_keys"]

    await redis.config_set("maxmemory-policy", "volatile-lru")
    await redis.config_set("maxmemory", 1)
    await redis.ping()  # each command first evicts what it can
    await redis.config_set("maxmemory", 0)

    assert (await redis.info("stats"))["evicted_keys"] > evicted_before
    assert await dest.seen([seen_id]) == [None]  # read as "not seen": uploaded again
    assert await dest.claims([claimed_id]) == [None]  # not superseded: uploaded
    assert await lease.holder() is None  # the sync stops at its next renewal
    assert not await lease.renew()
    checkpoint = await feed.checkpoint()
    assert checkpoint is not None
    assert checkpoint.run_id == "run-1"
    assert (await bus.counts(upload_queue(DEST))).depth == 1


# ---- an evicted fetcher lease --------------------------------------------------------------


async def test_an_evicted_lease_is_taken_and_the_loser_cannot_move_the_checkpoint_back(
    redis: Redis, own_server: LocalRedis
) -> None:
    """Two fetchers, each with its own client. The loser learns it lost at its next renewal
    and cannot release the winner's lease; its late checkpoint, behind the winner's, moves
    nothing."""
    other: Redis = connect(own_server.url)
    try:
        now = server_now_close_to_ours()
        a, b = FetcherLease(redis, owner="fetcher-a"), FetcherLease(other, owner="fetcher-b")
        assert await a.acquire()
        assert not await b.acquire()
        await redis.delete(a.key)  # what volatile-lru does to it (see the test above)
        assert await b.acquire()
        assert not await a.renew()
        assert not await a.release()
        assert await b.holder() == "fetcher-b"

        feed_a, feed_b = FeedState(redis), FeedState(other)
        assert await feed_b.advance(now - timedelta(minutes=5), "run-b")
        assert not await feed_a.advance(now - timedelta(minutes=30), "run-a")
        checkpoint = await feed_a.checkpoint()
        assert checkpoint is not None
        assert checkpoint.run_id == "run-b"
    finally:
        await other.aclose()


async def test_two_fetchers_after_an_evicted_lease_skip_no_page(
    server_ssl: Any, client_ssl: Any, redis: Redis, tmp_path: Path
) -> None:
    """The lease is evicted while fetcher A pages; B takes it at once and syncs from the
    checkpoint A had reached, while A may still publish (and checkpoint) the page in hand.
    Every indicator of the window is published and the checkpoint is the newest of them: no
    page skipped.

    No fence on the checkpoint is needed for this: each fetcher moves it only past pages it
    published itself, from a start at or before the checkpoint it read, and it only moves
    forward (``FeedState.advance``)."""
    config = FetcherConfig((DEST,), LOOKBACK, page_size=20)
    async with world(server_ssl, client_ssl, redis, page_latency_s=0.1) as w:
        fetcher_a = w.fetcher(owner="fetcher-a", config=config)
        fetcher_b = w.fetcher(owner="fetcher-b", config=config)
        syncing_a = asyncio.create_task(w.sync(fetcher_a))
        await wait_for(w.state.checkpoint, what="A's first page")
        await redis.delete(fetcher_a.lease.key)  # evicted
        summary_b = await w.sync(fetcher_b)
        summary_a = await syncing_a
        published = await w.drain()

        assert summary_a.outcome is Outcome.LEASE_LOST
        assert summary_b.outcome is Outcome.COMPLETED
        first, *_ = w.first_queries()
        window = w.expected(first)
        assert summary_a.published < len(window)  # A really stopped part-way
        assert set(ids(published)) == set(window)
        assert await w.checkpoint() == newest(published)
