"""Figure 5 (and figure 2's run): memory at growing backlogs, throughput end to end.

For each backlog (10k, 100k, 300k indicators) the whole product runs as processes (fetcher
service, filter, one uploader) against a simulated Sentinel without a quota and the product's
rate budget opened as wide as its settings allow. While it runs, each service's peak resident
set (``VmHWM``) is sampled; once everything is stored, Redis's ``used_memory`` is read, the
seen keys are deleted, and the difference per deleted key is what one remembered indicator
costs. The same run gives figure 2: indicators from the first page served to the last object
stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from bench.common import Figure, mib
from bench.end_to_end import WIDE_OPEN, unthrottled_figure
from bench.runs import NO_QUOTA, Run, first_page, pipeline_run
from harness.pipeline import DESTINATION
from shared.adapters.destination_state import DestinationState
from shared.adapters.feed_state import FeedState
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.messages import revocation_queue, subscription, upload_queue

TARGET_GROWTH = 0.10
TARGET_BYTES = 200
#: Seen keys sampled for what they are made of.
SAMPLE = 200
#: Seen keys deleted per ``DEL``.
DELETE_BATCH = 500


async def _until_done(run: Run, *, timeout_s: float) -> float:
    """Poll until the sync finished and both queues are empty and the workspace stopped
    growing; returns the monotonic time the last object was stored. Samples RSS meanwhile."""
    pipeline = run.pipeline
    assert pipeline.redis is not None
    feed = FeedState(pipeline.redis)
    store = pipeline.sims.sentinel.store
    deadline = time.monotonic() + timeout_s
    size, changed_at, next_rss = len(store), time.monotonic(), 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if len(store) != size:
            size, changed_at = len(store), now
        if now >= next_rss:
            run.sample_rss()
            next_rss = now + 0.5
            last = await feed.last_run()
            if last is not None and now - changed_at > 1.0 and await pipeline.queues_empty():
                return changed_at
        await asyncio.sleep(0.02)
    raise TimeoutError("the pipeline did not finish in time")


#: ``MEMORY STATS`` parts a seen key's deletion frees, as Redis 7.0 counts them: the main
#: table (a 24-byte entry, the value's 16-byte object header, 8 bytes a slot), the expires
#: table (an entry and slots), and the data set (the rest: the key's and the value's bytes,
#: and what the allocator rounds every allocation up to).
SEEN_PARTS = ("main_table", "expires_table", "dataset")
#: Parts that move with the clients and the AOF, not with the keys.
_BUFFERS = ("clients.normal", "clients.slaves", "aof.buffer", "replication.backlog")


def _freed_by_part(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    """What ``MEMORY STATS`` says each part gave back between ``before`` and ``after``."""

    def parts(stats: Mapping[str, Any]) -> dict[str, int]:
        db = stats.get("db.0") or {}
        return {
            "main_table": int(db.get("overhead.hashtable.main", 0)),
            "expires_table": int(db.get("overhead.hashtable.expires", 0)),
            "dataset": int(stats.get("dataset.bytes", 0)),
            "buffers": sum(int(stats.get(name, 0)) for name in _BUFFERS),
        }

    old, new = parts(before), parts(after)
    return {part: old[part] - new[part] for part in old}


async def seen_cache_bytes(redis: Redis, destinations: Sequence[str]) -> dict[str, Any]:
    """Redis memory now, and what deleting every seen key of ``destinations`` gives back, per
    key; beside it what a sample of the keys is made of (key and value length, encoding,
    ``MEMORY USAGE``, expiry) and what ``MEMORY STATS`` says each part gave back, for the
    breakdown of where the bytes go. ``bytes_per_seen_key_net`` leaves out what the clients'
    and the AOF's buffers gave back meanwhile (a few hundred kB that can fall either way)."""
    keys: list[bytes] = []
    by_destination: dict[str, int] = {}
    for destination in destinations:
        pattern = DestinationState(redis, destination).seen_key("*")  # "*" is kept as it is
        found = [key async for key in redis.scan_iter(match=pattern, count=5000)]
        by_destination[destination] = len(found)
        keys += found
    sample = keys[:: max(1, len(keys) // SAMPLE)][:SAMPLE]
    pipe = redis.pipeline(transaction=False)
    for key in sample:
        pipe.memory_usage(key)
        pipe.object("encoding", key)
        pipe.strlen(key)
        pipe.pttl(key)
    answers = await pipe.execute() if sample else []
    usage = [int(a or 0) for a in answers[0::4]]
    encodings = sorted({a.decode() if isinstance(a, bytes) else str(a) for a in answers[1::4]})
    lengths = [int(a) for a in answers[2::4]]
    expiring = sum(1 for a in answers[3::4] if int(a) > 0)
    server = await redis.info("server")
    # Read right before the deletions, after the scan: what the scan and the samples leave
    # behind (reply buffers, a few tens of kB) is then on both sides.
    stats_before = await redis.memory_stats()
    before = int(stats_before["total.allocated"])
    # DELs of 500 keys (about 20 kB): one of 5,000 left this client a query buffer of some
    # 500 kB still held when the memory is read again, counted as keys that were not freed.
    for start in range(0, len(keys), DELETE_BATCH):
        await redis.delete(*keys[start : start + DELETE_BATCH])
    # Redis shrinks its key tables (their share per key is 16 to 32 bytes) in its periodic
    # task after the deletions: read until that happened, so every run counts the tables.
    after, stats_after = before, stats_before
    for _ in range(10):
        stats = await redis.memory_stats()
        if int(stats["total.allocated"]) < after:
            after, stats_after = int(stats["total.allocated"]), stats
        await asyncio.sleep(0.2)
    freed = _freed_by_part(stats_before, stats_after)
    net = sum(freed[part] for part in SEEN_PARTS)
    per_key = {part: round(n / len(keys), 1) for part, n in freed.items()} if keys else {}
    return {
        "seen_keys": len(keys),
        "seen_keys_by_destination": by_destination,
        "used_memory_bytes": before,
        "freed_by_deleting_seen_keys": before - after,
        "bytes_per_seen_key": round((before - after) / len(keys), 1) if keys else None,
        "bytes_per_seen_key_net": round(net / len(keys), 1) if keys else None,
        "freed_per_seen_key_by_part": per_key,
        "memory_usage_sample_avg": round(sum(usage) / len(usage), 1) if usage else None,
        "key_chars_sample_avg": round(sum(map(len, sample)) / len(sample), 1) if sample else None,
        "value_bytes_sample_avg": round(sum(lengths) / len(lengths), 1) if lengths else None,
        "object_encodings": encodings,
        "expiring_share_of_sample": round(expiring / len(sample), 3) if sample else None,
        "redis_version": server.get("redis_version"),
    }


async def _seen_bytes(run: Run) -> dict[str, Any]:
    """Redis memory now, and what deleting every seen key gives back, per key."""
    assert run.pipeline.redis is not None
    return await seen_cache_bytes(run.pipeline.redis, [DESTINATION])


async def measure(count: int) -> dict[str, Any]:
    async with pipeline_run(
        count=count, env=WIDE_OPEN, sentinel_requests_per_minute=NO_QUOTA, fetcher_service=True
    ) as run:
        pipeline = run.pipeline
        assert pipeline.redis is not None
        baseline = int((await pipeline.redis.info("memory"))["used_memory"])
        started = await first_page(pipeline, timeout_s=120)
        await run.mark_cpu()
        finished = await _until_done(run, timeout_s=max(120.0, count / 300))
        cpu = run.cpu_used()
        run.sample_rss()
        stored = len(pipeline.sims.sentinel.store)
        _, counters = await pipeline.counters()
        observer = RedisStreamsBus(pipeline.redis, consumer="bench-observer")
        dead = 0
        for source in (
            subscription(DESTINATION),
            upload_queue(DESTINATION),
            revocation_queue(DESTINATION),
        ):
            dead += (await observer.counts(source)).dead_letter
        memory = await _seen_bytes(run)
    seconds = finished - started
    return {
        "backlog": count,
        "stored": stored,
        "uploaded_counter": counters.get("uploaded", 0),
        "dead_lettered": dead,
        "seconds": round(seconds, 2),
        "indicators_per_s": round(stored / seconds),
        "cpu_seconds": cpu,
        "peak_rss_mib": {label: mib(value) for label, value in sorted(run.peak_rss.items())},
        "peak_rss_bytes": dict(sorted(run.peak_rss.items())),
        "redis_used_memory_growth_per_indicator": round(
            (memory["used_memory_bytes"] - baseline) / max(1, stored), 1
        ),
        **memory,
    }


async def run(backlogs: tuple[int, ...] = (10_000, 100_000, 300_000)) -> list[dict[str, Any]]:
    return [await measure(n) for n in backlogs]


def figures(
    results: list[dict[str, Any]],
    *,
    e2e_backlog: int = 100_000,
    more_e2e_runs: Sequence[dict[str, Any]] = (),
) -> list[Figure]:
    """Figure 2 from the ``e2e_backlog`` run (or the largest) and ``more_e2e_runs`` of the
    same backlog: the median by rate, since consecutive runs on this shared machine differ by
    up to a fifth. Figure 5 from all of ``results``."""
    first = next((r for r in results if r["backlog"] == e2e_backlog), results[-1])
    runs = sorted([first, *more_e2e_runs], key=lambda r: r["indicators_per_s"])
    chosen = runs[len(runs) // 2]
    e2e = unthrottled_figure(
        f"2. End to end, unthrottled (fetcher, filter, 1 uploader), median of {len(runs)}",
        chosen["indicators_per_s"],
        {
            "indicators": chosen["stored"],
            "seconds": chosen["seconds"],
            "indicators_per_s_each_run": [r["indicators_per_s"] for r in runs],
            "cpu_seconds": chosen["cpu_seconds"],
        },
    )
    small, large = results[0], results[-1]
    growth = {
        label: round(large["peak_rss_bytes"][label] / small["peak_rss_bytes"][label] - 1, 3)
        for label in small["peak_rss_bytes"]
        if label in large["peak_rss_bytes"]
    }
    per_key = [r["bytes_per_seen_key"] for r in results if r["bytes_per_seen_key"] is not None]
    worst_growth = max(growth.values()) if growth else None
    worst_bytes = max(per_key) if per_key else None
    memory = Figure(
        key="memory",
        title=f"5. Memory, backlog {small['backlog']:,} -> {large['backlog']:,}",
        ratio=worst_growth,
        target=f"RSS growth <= {TARGET_GROWTH:.0%}; Redis <= {TARGET_BYTES} B/indicator",
        passed=(
            worst_growth is not None
            and worst_growth <= TARGET_GROWTH
            and worst_bytes is not None
            and worst_bytes <= TARGET_BYTES
        ),
        absolute={
            "rss_growth_by_service": growth,
            "redis_bytes_per_seen_key_worst": worst_bytes,
            "by_backlog": [
                {
                    key: r[key]
                    for key in (
                        "backlog",
                        "stored",
                        "seconds",
                        "indicators_per_s",
                        "peak_rss_mib",
                        "seen_keys",
                        "bytes_per_seen_key",
                        "memory_usage_sample_avg",
                        "redis_used_memory_growth_per_indicator",
                        "dead_lettered",
                    )
                }
                for r in results
            ],
        },
        note="ratio = worst RSS growth (fraction) across services",
    )
    return [e2e, memory]


if __name__ == "__main__":
    out = asyncio.run(run((10_000, 30_000)))
    for figure in figures(out, e2e_backlog=30_000):
        print(figure.to_json())
