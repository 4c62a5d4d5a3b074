"""Redis out of memory, with the real services (issue 16): both policies an operator can meet.

- ``noeviction`` (what the chart README asks for): at ``maxmemory`` Redis refuses writes; the
  filter and the uploader back off and stay up, ``/readyz`` goes false, a ``sync`` fails in
  one line, the alert fires from what ``/metrics`` says, and once memory is freed the work
  resumes and the workspace holds exactly what it must.
- ``volatile-lru`` (Azure Cache for Redis's default): every service warns at start and
  ``status`` names the policy; Redis really evicts the claims and the seen entries, which
  costs re-uploads and never an indicator.

Feeds are small and the memory limit is set and lifted with ``CONFIG SET`` on the pipeline's
own Redis, so each test takes seconds.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from redis.asyncio import Redis

from harness.pipeline import ACCEPT_ALL, DESTINATION, Pipeline
from simulators.feed import Feed
from tests.dashboards import ALERTS, alert_rules
from tests.e2e.pipeline_tools import (
    PipelineFactory,
    assert_delivered,
    log_events,
    queue_counts,
    run_cli,
    upload_histogram,
)
from tests.e2e.test_metrics import health_port
from tests.e2e.test_readiness import readyz
from tests.helpers import Samples, samples, wait_for
from tests.prometheus_tools import ensure_prometheus

#: The seen cache starts empty and trusted: no rebuild from the workspace to wait for first.
ENV: Mapping[str, str] = {"CACHE_REBUILD": "off"}
READY = "mati2sentinel_ready"


# ---- noeviction at maxmemory -----------------------------------------------------------------

#: Uploads at one request of 100 a second: the back-log lasts seconds, long enough for Redis
#: to fill up mid-run.
SLOW_UPLOADS: Mapping[str, str] = {
    **ENV,
    **ACCEPT_ALL,
    "SENTINEL_REQUESTS_PER_MINUTE": "1",
    "SENTINEL_RATE_WINDOW_SECONDS": "1",
}


#: What one uploader holds at once: two lanes of a batch of 100 each.
IN_FLIGHT = 2 * 100


def full_limit(memory: Mapping[str, Any]) -> int:
    """A ``maxmemory`` that leaves Redis full until it is lifted: below what it holds without
    its clients' buffers (they come and go) by half its data. Just above its use would not
    do: every completed batch frees its messages, more than its seen entries take, so a batch
    slipping through now and then would drain the back-log at the edge of the limit. Here
    nothing completes: a batch completes only after its commit, a write Redis refuses."""
    held = int(memory["used_memory"]) - int(memory["mem_clients_normal"])
    return held - int(memory["used_memory_dataset"]) // 2


@pytest.mark.timeout(150)
async def test_at_maxmemory_writes_fail_services_wait_and_nothing_is_lost(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    promtool = ensure_prometheus("promtool")
    pipeline = await make_pipeline(feed=Feed(seed=16, count=600, days=29), env=SLOW_UPLOADS)
    redis = pipeline.redis
    assert redis is not None
    assert (await redis.info("memory"))["maxmemory_policy"] == "noeviction"
    expected = pipeline.expected()
    services = {name: await pipeline.start_service(name) for name in ("filter", "uploader")}
    ports = {name: await wait_for(partial(health_port, pipeline, name), 30) for name in services}
    assert await pipeline.sync_once() == 0
    store = pipeline.sims.sentinel.store
    await wait_for(lambda: store, 30, what="the first upload")

    # Mid-run, the back-log fills Redis up.
    await redis.config_set("maxmemory", full_limit(await redis.info("memory")))
    # It waits before it uploads: its share of Sentinel's quota is itself a write Redis refuses.
    await wait_for(partial(backed_off, pipeline, "uploader", "upload.budget_unavailable"), 30,
                   what="the uploader to back off")  # fmt: skip
    assert 0 < len(store) < len(expected.objects)
    async with aiohttp.ClientSession() as http:
        for name, port in ports.items():
            body = await wait_for(partial(refusing, http, port), 30, what=f"{name} not ready")
            assert body["checks"]["redis"] == "ok"  # PING answers all along: it cannot tell
        refused = await wait_for(partial(scraped_ready, http, ports, 0.0), 30, what="gauges at 0")
    # A pod restarted now waits for Redis (it cannot even create its queues) instead of
    # crash-looping, and a sync cannot take the fetcher's lease: one line, exit 1.
    assert await pipeline.stop_service(services["filter"]) == 0
    services["filter"] = await pipeline.start_service("filter", label="filter-restarted")
    await wait_for(partial(backed_off, pipeline, "filter-restarted", "filter.ensure_failed"), 30,
                   what="the restarted filter to back off")  # fmt: skip
    assert await pipeline.command("sync", "--once", label="sync-oom", timeout_s=60) == 1
    failed = [e for e in log_events(pipeline, "sync-oom") if e["event"] == "fetch.sync_failed"]
    assert len(failed) == 1
    assert "OutOfMemoryError" in failed[0]["error"]
    assert "Traceback" not in (pipeline.state_dir / "logs" / "sync-oom.log").read_text()
    assert all(child.running for child in services.values())

    await redis.config_set("maxmemory", 0)  # memory freed: the work resumes on its own
    await pipeline.wait_drained(timeout_s=60)
    # None lost, none foreign, none stale. A batch Sentinel accepted but Redis refused to
    # commit is uploaded once more after Redis recovers, never at each retry while it is full:
    # the rate budget is itself a write Redis refuses, so no upload starts that cannot commit.
    assert_delivered(pipeline, expected, max_uploads=2)
    histogram = upload_histogram(pipeline, expected)
    again = sum(count for uploads, count in histogram.items() if uploads > 1)
    assert again <= IN_FLIGHT, f"only the batches in flight are sent again: {histogram}"
    ports["filter"] = await wait_for(partial(health_port, pipeline, "filter-restarted"), 30)
    async with aiohttp.ClientSession() as http:
        for name, port in ports.items():
            await wait_for(partial(ready, http, port), 30, what=f"{name} ready again")
        healthy = await wait_for(partial(scraped_ready, http, ports, 1.0), 30, what="gauges at 1")
    assert_alert_fires(promtool, tmp_path, "Mati2SentinelRedisRefusingWrites", healthy, refused)


def backed_off(pipeline: Pipeline, label: str, event: str) -> bool:
    """``label`` warned ``event`` because Redis refused a write for want of memory."""
    return any(
        e["event"] == event and e["level"] == "warning" and b"OutOfMemoryError" in orjson.dumps(e)
        for e in log_events(pipeline, label)
    )


async def refusing(http: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    """``/readyz``'s body once it answers 503 because Redis refuses writes (OOM)."""
    status, body = await readyz(http, port)
    checks = body.get("checks")
    writes = str(checks.get("redis_writes", "")) if isinstance(checks, dict) else ""
    refused = status == 503 and writes.startswith("not_ready: redis refuses writes (OOM")
    return body if refused else None


async def ready(http: aiohttp.ClientSession, port: int) -> bool:
    status, _ = await readyz(http, port)
    return status == 200


async def scraped_ready(
    http: aiohttp.ClientSession, ports: Mapping[str, int], value: float
) -> dict[str, float] | None:
    """Every service's ``mati2sentinel_ready{check="redis_writes"}`` as Prometheus would store
    it (a ``pod`` label per service), once each equals ``value``."""
    found: dict[str, float] = {}
    for name, port in ports.items():
        found |= series(await scrape(http, port), name, READY, check="redis_writes")
    return found if len(found) == len(ports) and set(found.values()) == {value} else None


async def queued(pipeline: Pipeline, count: int) -> bool:
    """The filter is done and ``count`` uploads wait in the queue."""
    counts = await queue_counts(pipeline)
    return counts["subscription"][:2] == (0, 0) and counts["upload"][0] == count


# ---- volatile-lru ----------------------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_an_evicting_policy_is_named_and_its_evictions_cost_re_uploads_only(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    promtool = ensure_prometheus("promtool")
    pipeline = await make_pipeline(feed=Feed(seed=17, count=300, days=29), env=ENV)
    redis = pipeline.redis
    assert redis is not None
    expected = pipeline.expected()
    await redis.config_set("maxmemory-policy", "volatile-lru")

    await pipeline.start_service("filter")
    port = await wait_for(partial(health_port, pipeline, "filter"), 30)
    warned = await wait_for(partial(policy_warnings, pipeline, "filter"), 30, what="a warning")
    assert len(warned) == 1
    assert warned[0]["maxmemory_policy"] == "volatile-lru"
    assert "noeviction" in warned[0]["fix"]
    text = (await run_cli(pipeline, "status")).stdout
    assert "maxmemory-policy volatile-lru (evicts keys with a TTL" in text
    assert "set maxmemory-policy noeviction" in text
    status = orjson.loads((await run_cli(pipeline, "status", "--json")).stdout)
    assert status["redis"]["maxmemory_policy"] == "volatile-lru"
    assert status["redis"]["evicting"] is True

    # The filter claims and queues every upload; Redis fills up and evicts the claims.
    assert await pipeline.sync_once() == 0
    await wait_for(partial(queued, pipeline, len(expected.objects)), 30, what="uploads queued")
    assert await evict(redis, "inflight:") == len(expected.objects)
    await pipeline.start_service("uploader")
    await pipeline.wait_drained(timeout_s=60)
    assert_delivered(pipeline, expected, max_uploads=1)

    # Now the seen entries are evicted: a full sync uploads again what MATI still reports.
    assert await evict(redis, "s:") == len(expected.objects)
    assert await pipeline.sync_once(full=True) == 0
    await pipeline.wait_drained(timeout_s=60)
    assert_delivered(pipeline, expected, max_uploads=2)  # nothing lost
    # Re-uploaded: every one the filter could no longer tell was live. The rest MATI last
    # reported longer ago than their expiration, which a full sync does not bring back
    # (``stale``); they are still live in the workspace from their first upload.
    again = upload_histogram(pipeline, expected).get(2, 0)
    _, counters = await pipeline.counters()
    assert again > 0
    assert again + counters.get("dropped_stale", 0) == len(expected.objects)

    async with aiohttp.ClientSession() as http:
        evicting = series(await scrape(http, port), "filter", "mati2sentinel_redis_evicting")
    assert list(evicting.values()) == [1.0]
    assert_alert_fires(promtool, tmp_path, "Mati2SentinelRedisEvicts", evicting, evicting)


def policy_warnings(pipeline: Pipeline, label: str) -> list[dict[str, object]]:
    return [
        e
        for e in log_events(pipeline, label)
        if e["event"] == "redis.evicting_policy" and e["level"] == "warning"
    ]


async def evict(redis: Redis, kind: str) -> int:
    """Let Redis evict as it does when full: ``maxmemory`` far below its use for one command,
    then lifted. Returns how many of the destination's ``kind`` keys (``s:`` seen entries,
    ``inflight:`` claims) it evicted; the queues, without a TTL, stay."""
    pattern = f"m2s:{{{DESTINATION}}}:{kind}*"
    before = [key async for key in redis.scan_iter(match=pattern, count=1000)]
    evicted = (await redis.info("stats"))["evicted_keys"]
    await redis.config_set("maxmemory", 1)
    await redis.ping()  # every command first evicts what it can
    await redis.config_set("maxmemory", 0)
    assert (await redis.info("stats"))["evicted_keys"] > evicted
    after = [key async for key in redis.scan_iter(match=pattern, count=1000)]
    assert after == []
    return len(before)


# ---- what /metrics says, through the alert rules ---------------------------------------------


async def scrape(http: aiohttp.ClientSession, port: int) -> Samples:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        return samples(await response.text())


def series(scraped: Samples, pod: str, name: str, **match: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of the samples of ``name`` whose labels include ``match``,
    with the ``pod`` label Prometheus's scrape would add."""
    found: dict[str, float] = {}
    for (sample, labels), value in scraped.items():
        values = dict(labels)
        if sample == name and all(values.get(k) == v for k, v in match.items()):
            inner = ", ".join(f'{k}="{v}"' for k, v in sorted({**values, "pod": pod}.items()))
            found[f"{name}{{{inner}}}"] = value
    return found


def assert_alert_fires(
    promtool: str,
    directory: Path,
    alertname: str,
    before: Mapping[str, float],
    during: Mapping[str, float],
) -> None:
    """``promtool test rules`` over the scraped series: ``before`` for two minutes, then
    ``during`` for half an hour. ``alertname`` must be silent at the start and firing, with
    its labels and annotations, at the end."""
    rule: dict[str, Any] = next(r for r in alert_rules() if r["alert"] == alertname)
    labels = {**rule["labels"], "destination": DESTINATION}
    annotations = {
        key: str(text).replace("{{ $labels.destination }}", DESTINATION)
        for key, text in rule["annotations"].items()
    }
    case = {
        "interval": "1m",
        "input_series": [
            {"series": name, "values": f"{before.get(name, value):g} " * 2 + f"{value:g}x30"}
            for name, value in during.items()
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": alertname, "exp_alerts": []},
            {
                "eval_time": "30m",
                "alertname": alertname,
                "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
            },
        ],
    }
    path = directory / f"{alertname}.test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "tests": [case]}))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
