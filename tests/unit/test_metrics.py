"""Metrics: the counter-name mapping, counts and upload calls mirrored into instruments, gauges
served from their cache, /metrics on the probes server, and OTLP export to a real collector
endpoint (an HTTPS route decoding the protobuf the SDK's exporter posts)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.observability import gauge_reads, serving
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.sentinel_client import SentinelClient, observe_requests
from shared.adapters.state import CircuitState, DestinationState, FeedState, observe_counts
from shared.contract.messages import upload_queue
from shared.core.errors import BatchRejected, ConfigError, RateLimited, UpstreamUnavailable
from shared.core.settings import Service, Settings
from shared.telemetry.gauges import GaugeCache, Reading
from shared.telemetry.health import Health, HealthServer
from shared.telemetry.metrics import (
    EVENTS,
    EXACT,
    PREFIXED,
    Metrics,
    counter_for,
    exporter_readers,
)
from simulators.tls import SimulatorCA
from tests.clients.peers import one_route

#: Every counter name the services count today (grep ``.count(`` / ``_tally[`` / ``counts[``),
#: with what it must stay: dashboards and alerts are written against these.
KNOWN: Mapping[str, tuple[str, str | None]] = {
    "fetched": ("mati2sentinel_indicators_fetched_total", None),
    "published": ("mati2sentinel_indicators_published_total", None),
    "pages": ("mati2sentinel_pages_fetched_total", None),
    "without_last_updated": ("mati2sentinel_indicators_undated_total", None),
    "last_updated_after_window": ("mati2sentinel_indicators_after_window_total", None),
    "cursor_restarts": ("mati2sentinel_cursor_restarts_total", None),
    "sync_completed": ("mati2sentinel_syncs_total", "completed"),
    "sync_failed": ("mati2sentinel_syncs_total", "failed"),
    "sync_lease_lost": ("mati2sentinel_syncs_total", "lease_lost"),
    "sync_standby": ("mati2sentinel_syncs_total", "standby"),
    "sync_stopped": ("mati2sentinel_syncs_total", "stopped"),
    "received": ("mati2sentinel_indicators_received_total", None),
    "rejected_missing_id": ("mati2sentinel_indicators_rejected_total", "missing_id"),
    "dropped_low_confidence": ("mati2sentinel_indicators_dropped_total", "low_confidence"),
    "dropped_unchanged": ("mati2sentinel_indicators_dropped_total", "unchanged"),
    "dropped_in_flight": ("mati2sentinel_indicators_dropped_total", "in_flight"),
    "forwarded": ("mati2sentinel_indicators_forwarded_total", None),
    "forwarded_new": ("mati2sentinel_indicators_forwarded_by_reason_total", "new"),
    "forwarded_refresh": ("mati2sentinel_indicators_forwarded_by_reason_total", "refresh"),
    "failed": ("mati2sentinel_indicators_failed_total", None),
    "uploaded": ("mati2sentinel_indicators_uploaded_total", None),
    "rejected": ("mati2sentinel_sentinel_rejected_total", None),
    "superseded": ("mati2sentinel_indicators_superseded_total", None),
    "already_uploaded": ("mati2sentinel_indicators_already_uploaded_total", None),
    "requests": ("mati2sentinel_upload_requests_total", None),
    "throttled": ("mati2sentinel_upload_throttled_total", None),
    "throttle_wait_seconds": ("mati2sentinel_upload_throttle_wait_seconds_total", None),
    "retried": ("mati2sentinel_upload_retries_total", None),
    "split": ("mati2sentinel_upload_splits_total", None),
    "circuit_opened": ("mati2sentinel_circuit_opened_total", None),
    "dead_lettered": ("mati2sentinel_messages_dead_lettered_total", None),
    "dead_lettered_rejected_by_sentinel": (
        "mati2sentinel_messages_dead_lettered_by_reason_total",
        "rejected_by_sentinel",
    ),
    "abandoned": ("mati2sentinel_messages_abandoned_total", None),
    "lock_lost": ("mati2sentinel_messages_lock_lost_total", None),
}


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


async def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = await metrics.scrape()
    assert content_type.startswith("text/plain")
    return samples(body)


# ---- the name mapping ---------------------------------------------------------------------


def test_every_known_counter_has_its_documented_name() -> None:
    for name, (metric, value) in KNOWN.items():
        family, label = counter_for(name)
        assert (family.prometheus_name, label) == (metric, value), name
        assert family is not EVENTS, name


def test_exact_names_and_prefixes_do_not_shadow_each_other() -> None:
    names = [family.name for family in EXACT.values()] + [f.name for _, f in PREFIXED]
    assert len(names) == len(set(names)), "two counter names share an instrument"
    for name in EXACT:
        assert counter_for(name) == (EXACT[name], None)


@given(st.text(max_size=80))
def test_the_mapping_is_total_stable_and_label_safe(name: str) -> None:
    family, value = counter_for(name)
    assert counter_for(name) == (family, value)
    if family.label is None:
        assert value is None
    else:
        assert value is not None
        assert 1 <= len(value) <= 64
        assert set(value) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")


def test_unknown_and_unlabellable_names_land_in_events() -> None:
    assert counter_for("brand_new_thing") == (EVENTS, "brand_new_thing")
    assert counter_for("dropped_") == (EVENTS, "dropped_")
    assert counter_for("dropped_Bad Reason!") == (EVENTS, "dropped_bad_reason_")
    assert counter_for("") == (EVENTS, "unnamed")


# ---- counters -----------------------------------------------------------------------------


async def test_counts_mirror_into_instruments_with_their_labels() -> None:
    metrics = Metrics(service=Service.FILTER, destination="demo")
    try:
        metrics.counted("demo", {"received": 7, "dropped_low_confidence": 3, "forwarded": 4})
        metrics.counted("demo", {"forwarded_new": 4, "dropped_low_confidence": 1, "odd": 2})
        metrics.counted("demo", {"forwarded": 0, "received": -5})  # nothing, never negative
        metrics.counted("", {"fetched": 9})  # the feed's counts carry our destination
        found = await scrape(metrics)
    finally:
        metrics.shutdown()
    demo = labels(destination="demo")
    assert found[("mati2sentinel_indicators_received_total", demo)] == 7
    assert found[("mati2sentinel_indicators_forwarded_total", demo)] == 4
    dropped = labels(destination="demo", reason="low_confidence")
    assert found[("mati2sentinel_indicators_dropped_total", dropped)] == 4
    new = labels(destination="demo", reason="new")
    assert found[("mati2sentinel_indicators_forwarded_by_reason_total", new)] == 4
    assert found[("mati2sentinel_events_total", labels(destination="demo", event="odd"))] == 2
    assert found[("mati2sentinel_indicators_fetched_total", demo)] == 9
    # The filter's other counters and forward reasons are shown at 0 before their first count.
    assert found[("mati2sentinel_indicators_failed_total", demo)] == 0
    refresh = labels(destination="demo", reason="refresh")
    assert found[("mati2sentinel_indicators_forwarded_by_reason_total", refresh)] == 0
    unchanged = labels(destination="demo", reason="unchanged")
    assert found[("mati2sentinel_indicators_dropped_total", unchanged)] == 0
    invalid_json = labels(destination="demo", reason="invalid_json")
    assert found[("mati2sentinel_indicators_rejected_total", invalid_json)] == 0
    # ... but not the uploader's.
    assert ("mati2sentinel_indicators_uploaded_total", demo) not in found


async def test_state_counts_reach_observers_only_once_redis_took_them(
    redis_client: Redis,
) -> None:
    seen: list[tuple[str, dict[str, int]]] = []
    stop = observe_counts(lambda destination, counts: seen.append((destination, dict(counts))))
    try:
        await DestinationState(redis_client, "demo").count({"uploaded": 2})
        await FeedState(redis_client).count({"fetched": 5, "pages": 1})
        broken = Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
        with pytest.raises(Exception, match="redis"):
            await DestinationState(broken, "demo").count({"uploaded": 99})
        await broken.aclose()
    finally:
        stop()
    await DestinationState(redis_client, "demo").count({"uploaded": 1})  # no longer observed
    assert seen == [("demo", {"uploaded": 2}), ("", {"fetched": 5, "pages": 1})]


async def test_a_failing_observer_never_fails_the_count(redis_client: Redis) -> None:
    def broken(destination: str, counts: Mapping[str, int]) -> None:
        raise RuntimeError("observer bug")

    stop = observe_counts(broken)
    try:
        await DestinationState(redis_client, "demo").count({"uploaded": 3})
    finally:
        stop()
    assert (await DestinationState(redis_client, "demo").counters())["uploaded"] == 3


# ---- upload latency -----------------------------------------------------------------------


class FixedTokens:
    """A token source for a scripted Sentinel route that checks no token."""

    async def token(self, scope: str) -> str:
        return "token"

    async def refresh(self, scope: str) -> str:
        return "token"


async def test_every_upload_call_is_timed_with_its_outcome(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    answers = iter(
        [
            web.Response(status=200),
            web.json_response({"errors": [{"recordIndex": 0, "errorMessages": ["bad"]}]}),
            web.Response(status=429, headers={"Retry-After": "3"}),
            web.Response(status=503),
            web.Response(status=400, text="no"),
        ]
    )

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return next(answers)

    calls: list[tuple[float, str]] = []
    metrics = Metrics(service=Service.UPLOADER, destination="demo")
    stop = observe_requests(metrics.requested)
    path = "/workspaces/ws/threat-intelligence-stix-objects:upload"
    try:
        async with (
            one_route(server_ssl, path, answer) as url,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as http,
        ):
            client = SentinelClient(
                http,
                FixedTokens(),
                base_url=url,
                workspace_id="ws",
                on_request=lambda s, o: calls.append((s, o)),
            )
            objects = [{"type": "indicator", "id": "indicator--1"}, {"type": "indicator"}]
            await client.upload(objects)
            await client.upload(objects)
            for error in (RateLimited, UpstreamUnavailable, BatchRejected):
                with pytest.raises(error):
                    await client.upload(objects)
        found = await scrape(metrics)
    finally:
        stop()
        metrics.shutdown()
    outcomes = ["accepted", "partial", "rate_limited", "unavailable", "rejected"]
    assert [outcome for _, outcome in calls] == outcomes
    assert all(seconds >= 0 for seconds, _ in calls)
    for outcome in outcomes:
        key = labels(destination="demo", outcome=outcome)
        assert found[("mati2sentinel_upload_request_duration_seconds_count", key)] == 1


# ---- gauges -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_gauges_come_from_the_cache_and_go_stale() -> None:
    clock = Clock()
    failures: list[str] = []
    state = {"depth": 4.0, "fail": False}

    async def queue() -> list[Reading]:
        if state["fail"]:
            raise ConnectionError("redis away")
        return [("mati2sentinel_queue_depth", state["depth"], {"queue": "upload.demo"})]

    cache = GaugeCache({"queue": queue}, stale_after_s=15, clock=clock, on_failure=failures.append)
    metrics = Metrics(service=Service.UPLOADER, destination="demo", gauges=cache)
    try:
        depth = ("mati2sentinel_queue_depth", labels(queue="upload.demo"))
        assert cache.observe("mati2sentinel_queue_depth") == []  # nothing read yet
        assert (await scrape(metrics))[depth] == 4.0  # a scrape reads first
        assert cache.observe("mati2sentinel_queue_depth")[0].value == 4.0

        state["depth"] = 9.0
        assert (await scrape(metrics))[depth] == 4.0  # cached: younger than a second
        clock.now += 2
        assert (await scrape(metrics))[depth] == 9.0

        state["fail"] = True
        clock.now += 10
        assert (await scrape(metrics))[depth] == 9.0  # the last reading, not yet stale
        clock.now += 10
        found = await scrape(metrics)
        assert depth not in found  # stale: absent rather than wrong
        assert failures == ["queue", "queue"]
        failed = labels(destination="demo", part="queue")
        assert found[("mati2sentinel_gauge_read_failures_total", failed)] == 2

        state["fail"] = False
        clock.now += 2
        assert (await scrape(metrics))[depth] == 9.0
    finally:
        metrics.shutdown()


async def test_each_service_reads_the_gauges_it_owns(redis_client: Redis) -> None:
    bus = RedisStreamsBus(redis_client, consumer="t")
    await bus.ensure(upload_queue("demo"))
    settings = Settings(destination="demo", sentinel_requests_per_minute=50)
    uploader = gauge_reads(Service.UPLOADER, settings, redis_client, bus)
    assert sorted(uploader) == ["circuit", "rate_budget", "upload_queue"]
    assert sorted(gauge_reads(Service.FILTER, settings, redis_client, bus)) == ["subscription"]
    assert sorted(gauge_reads(Service.FETCHER, settings, redis_client, bus)) == ["feed"]

    await DestinationState(redis_client, "demo").set_circuit(CircuitState.OPEN, "auth")
    readings = [r for read in uploader.values() for r in await read()]
    values = {name: value for name, value, _ in readings}
    assert values["mati2sentinel_circuit_state"] == 2
    assert values["mati2sentinel_rate_budget_limit"] == 50
    assert values["mati2sentinel_rate_budget_requests"] == 0
    assert values["mati2sentinel_queue_depth"] == 0
    assert {attrs["destination"] for _, _, attrs in readings} == {"demo"}

    (read_feed,) = gauge_reads(Service.FETCHER, settings, redis_client, bus).values()
    assert await read_feed() == []  # no checkpoint, no sync: no made-up age
    feed = FeedState(redis_client)
    await feed.advance(datetime(2025, 1, 1, tzinfo=UTC), "run")
    ages = {name: value for name, value, _ in await read_feed()}
    assert ages.keys() == {
        "mati2sentinel_checkpoint_age_seconds",
        "mati2sentinel_checkpoint_saved_age_seconds",
    }
    assert ages["mati2sentinel_checkpoint_age_seconds"] > 3600
    assert 0 <= ages["mati2sentinel_checkpoint_saved_age_seconds"] < 60
    finished = datetime.now(UTC) - timedelta(minutes=5)
    await feed.record_run({"outcome": "failed", "finished_at": finished.isoformat()})
    ages = {name: value for name, value, _ in await read_feed()}
    assert 300 <= ages["mati2sentinel_last_sync_age_seconds"] < 360
    assert ages["mati2sentinel_last_sync_completed"] == 0
    await bus.aclose()


# ---- serving ------------------------------------------------------------------------------


async def test_metrics_are_served_beside_the_probes_for_the_service_life(
    redis_client: Redis,
) -> None:
    health = Health()
    bus = RedisStreamsBus(redis_client, consumer="t")
    settings = Settings(destination="demo")
    async with (
        HealthServer(health, host="127.0.0.1", port=0) as server,
        aiohttp.ClientSession() as http,
    ):
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with http.get(url) as response:
            assert response.status == 404
        async with serving(
            Service.UPLOADER, settings, redis=redis_client, bus=bus, health=health, environ={}
        ):
            await DestinationState(redis_client, "demo").count({"uploaded": 5})
            async with http.get(url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                found = samples(await response.read())
        async with http.get(url) as response:
            assert response.status == 404
        await DestinationState(redis_client, "demo").count({"uploaded": 1})  # not observed
    assert found[("mati2sentinel_indicators_uploaded_total", labels(destination="demo"))] == 5
    assert found[("mati2sentinel_circuit_state", labels(destination="demo"))] == 0
    queue = labels(destination="demo", queue="upload.demo")
    assert found[("mati2sentinel_queue_depth", queue)] == 0
    await bus.aclose()


def test_exporters_follow_otel_metrics_exporter() -> None:
    assert exporter_readers({}) == []
    assert exporter_readers({"OTEL_METRICS_EXPORTER": "prometheus"}) == []
    assert exporter_readers({"OTEL_METRICS_EXPORTER": "none"}) == []
    with pytest.raises(ConfigError, match="unknown"):
        exporter_readers({"OTEL_METRICS_EXPORTER": "otlp,zipkin"})
    with pytest.raises(ConfigError, match="http/protobuf"):
        exporter_readers({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


async def test_otlp_export_reaches_a_collector_over_tls(
    server_ssl: ssl.SSLContext, sim_ca: SimulatorCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    async with one_route(server_ssl, "/v1/metrics", collect) as url:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"{url}/v1/metrics")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", str(sim_ca.ca_path))
        # requests lets this one override any CA file it is given (a known quirk of its own).
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        readers = exporter_readers({"OTEL_METRICS_EXPORTER": "otlp"})
        assert len(readers) == 1
        metrics = Metrics(service=Service.FILTER, destination="demo", readers=readers)
        metrics.counted("demo", {"dropped_low_confidence": 3})
        await asyncio.to_thread(metrics.shutdown)  # the last export, before the reader stops
    assert received, "the collector got nothing"
    points = {}
    for body in received:
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert service["service.name"] == "mati2sentinel-filter"
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.sum.data_points:
                        attrs = {a.key: a.value.string_value for a in point.attributes}
                        points[(metric.name, tuple(sorted(attrs.items())))] = point.as_int
    key = (
        "mati2sentinel_indicators_dropped",
        (("destination", "demo"), ("reason", "low_confidence")),
    )
    assert points[key] == 3
