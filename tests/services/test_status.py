"""``status`` and ``dlq``: what an operator sees, read back from real Redis state and queues."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from services.cli.status import RECENT_SUPPRESSIONS, collect, render
from services.runtime import Runtime
from shared.adapters.destination_state import CircuitState, DestinationState
from shared.adapters.feed_state import FeedState
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.suppressions import Suppression
from shared.adapters.workspace_state import Born, WorkspaceState
from shared.contract.bus import Message
from shared.contract.messages import INDICATORS, raw_message, subscription, upload_queue
from shared.core.settings import Service, load_settings


def runtime_for(redis: Redis, url: str) -> Runtime:
    settings = load_settings({"REDIS_URL": url, "DESTINATION": "soc"}, Service.ADMIN)
    bus = RedisStreamsBus(redis, consumer="status-test")
    return Runtime(settings, Service.ADMIN, "status-test", redis, bus, asyncio.Event())


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": url, "DESTINATION": "soc"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_status_shows_checkpoint_queues_counters_and_circuit(
    redis_client: Redis, redis_server: LocalRedis
) -> None:
    rt = runtime_for(redis_client, redis_server.url)
    now = datetime.now(UTC)
    await FeedState(redis_client).advance(now - timedelta(minutes=10), "run-1")
    await FeedState(redis_client).record_run(
        {"run_id": "run-1", "outcome": "completed", "pages": 2, "full": True}
    )
    await FeedState(redis_client).count({"fetched": 7})
    state = DestinationState(redis_client, "soc")
    await state.count({"dropped_low_confidence": 3, "uploaded": 4})
    await state.set_circuit(CircuitState.OPEN, "AuthenticationFailed")
    await rt.bus.ensure(upload_queue("soc"))
    await rt.bus.publish(upload_queue("soc"), [Message(b"{}", "m1"), Message(b"{}", "m2")])
    (held,) = await rt.bus.receive(upload_queue("soc"), max_messages=1, max_wait_s=1)
    await rt.bus.dead_letter(upload_queue("soc"), held, reason="rejected_by_sentinel",
                             description="Error for Property=pattern")  # fmt: skip

    status = await collect(rt, now=now)
    assert status.checkpoint_age_s is not None
    assert 590 <= status.checkpoint_age_s <= 610
    assert status.last_run == {"run_id": "run-1", "outcome": "completed", "pages": 2, "full": True}
    queue = next(e for e in status.entities if e.entity == "upload.soc")
    assert (queue.depth, queue.in_flight, queue.dead_letter) == (1, 0, 1)
    lane = next(e for e in status.entities if e.entity == "revoke.soc")
    assert (lane.depth, lane.in_flight, lane.dead_letter) == (0, 0, 0)
    assert status.counters == {"dropped_low_confidence": 3, "uploaded": 4}
    assert status.feed_counters == {"fetched": 7}
    assert (status.circuit, status.circuit_reason) == ("open", "AuthenticationFailed")
    text = render(status)
    assert "circuit      open (AuthenticationFailed)" in text
    assert "upload.soc" in text
    assert "revoke.soc" in text
    assert "(age 10m)" in text
    assert "last sync    run-1 (full): outcome=completed, pages=2" in text

    done = await asyncio.to_thread(cli, redis_server.url, "status", "--json")
    assert done.returncode == 0, done.stderr
    shown = orjson.loads(done.stdout)
    assert shown["counters"] == {"dropped_low_confidence": 3, "uploaded": 4}
    assert shown["circuit"] == "open"


async def test_status_shows_how_many_are_suppressed_and_the_newest(
    redis_client: Redis, redis_server: LocalRedis
) -> None:
    rt = runtime_for(redis_client, redis_server.url)
    await rt.bus.ensure(subscription("soc"))
    await rt.bus.ensure(upload_queue("soc"))
    store = DestinationState(redis_client, "soc").suppressions
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(RECENT_SUPPRESSIONS + 1):
        at = start + timedelta(hours=n)
        await store.add(Suppression(f"ipv4--{n}", f"10.0.0.{n}", "ipv4", f"reason {n}", at))

    status = await collect(rt)
    assert status.suppressed == RECENT_SUPPRESSIONS + 1
    newest = [s["mati_id"] for s in status.recent_suppressions]
    assert newest == [f"ipv4--{n}" for n in range(RECENT_SUPPRESSIONS, 0, -1)]
    text = render(status)
    assert f"suppressed   {RECENT_SUPPRESSIONS + 1} (newest first)" in text
    assert f"10.0.0.{RECENT_SUPPRESSIONS} (ipv4--{RECENT_SUPPRESSIONS}): reason" in text
    assert "`mati2sentinel suppress list` shows them all" in text

    done = await asyncio.to_thread(cli, redis_server.url, "status", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["suppressed"] == RECENT_SUPPRESSIONS + 1


async def test_status_shows_the_seen_cache_its_rebuild_and_the_last_reconcile(
    redis_client: Redis, redis_server: LocalRedis
) -> None:
    rt = runtime_for(redis_client, redis_server.url)
    await rt.bus.ensure(subscription("soc"))
    await rt.bus.ensure(upload_queue("soc"))
    workspace = WorkspaceState(redis_client, DestinationState(redis_client, "soc"))
    await workspace.rebuild_progress(
        {"state": "running", "partitions_done": 3, "partitions_total": 16, "written": 4200},
        fresh=True,
    )
    text = render(await collect(rt))
    assert "seen cache   empty, the filter holds until it is rebuilt: rebuild running, " in text
    assert "partition 3/16, 4200 written" in text
    assert "reconcile    never run (`mati2sentinel reconcile`)" in text

    at = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    await workspace.mark_born(Born.REBUILT, at=at, objects=4321)
    counts = {"agreeing": 4300, "missing": 20, "stale": 1, "unknown": 0}
    await workspace.save_reconcile(counts, at=at, drift=True, extra={"mode": "report"})
    status = await collect(rt)
    text = render(status)
    assert (
        "seen cache   rebuilt 2026-12-07T06:00:00+00:00 (4321 entries from the workspace)" in text
    )
    assert (
        "reconcile    2026-12-07T06:00:00+00:00 (report): agreeing=4300, missing=20, stale=1; "
        "drift streak 1"
    ) in text

    done = await asyncio.to_thread(cli, redis_server.url, "status", "--json")
    assert done.returncode == 0, done.stderr
    shown = orjson.loads(done.stdout)
    assert shown["seen_cache"]["how"] == "rebuilt"
    assert (shown["reconcile"]["missing"], shown["reconcile"]["streak"]) == ("20", "1")


async def test_dlq_lists_and_replays_with_the_reason(
    redis_client: Redis, redis_server: LocalRedis
) -> None:
    rt = runtime_for(redis_client, redis_server.url)
    source = subscription("soc")
    await rt.bus.ensure(source)
    record = {"id": "ipv4--1", "type": "ipv4"}
    await rt.bus.publish(INDICATORS, [raw_message(record, run_id="r")])
    (held,) = await rt.bus.receive(source, max_messages=1, max_wait_s=1)
    await rt.bus.dead_letter(source, held, reason="invalid_record",
                             description="missing_field: value")  # fmt: skip

    listed = await asyncio.to_thread(
        cli, redis_server.url, "dlq", "list", "--queue", "indicators", "--json"
    )
    assert listed.returncode == 0, listed.stderr
    (letter,) = orjson.loads(listed.stdout)
    assert (letter["indicator_id"], letter["reason"]) == ("ipv4--1", "invalid_record")
    assert letter["description"] == "missing_field: value"

    replayed = await asyncio.to_thread(
        cli, redis_server.url, "dlq", "replay", "--queue", "indicators"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 message(s)" in replayed.stdout
    counts = await rt.bus.counts(source)
    assert (counts.depth, counts.dead_letter) == (1, 0)
