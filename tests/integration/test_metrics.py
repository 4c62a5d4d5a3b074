"""Metrics against real peers: state counts reach the instruments only once Redis took them,
each upload call to an HTTPS Sentinel route is timed, the gauges each service reads from Redis,
/metrics on the probes server for the service's life, and OTLP export to a collector endpoint
(an HTTPS route decoding the protobuf the SDK's exporter posts). The pure parts (the name
mapping, instruments, the gauge cache) are in tests/unit/test_metrics.py."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.observability import gauge_reads, serving
from shared.adapters.destination_state import CircuitState, DestinationState
from shared.adapters.feed_state import FeedState
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.sentinel_client import SentinelClient, observe_requests
from shared.adapters.state_counters import observe_counts
from shared.adapters.workspace_state import WorkspaceState
from shared.contract.messages import upload_queue
from shared.core.errors import BatchRejected, RateLimited, UpstreamUnavailable
from shared.core.settings import Service, Settings
from shared.telemetry.health import Health, HealthServer
from shared.telemetry.metrics import Metrics, exporter_readers
from simulators.tls import SimulatorCA
from tests.clients.peers import one_route
from tests.helpers import labels, samples, scrape

# ---- counts -------------------------------------------------------------------------------


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


async def test_each_service_reads_the_gauges_it_owns(redis_client: Redis) -> None:
    bus = RedisStreamsBus(redis_client, consumer="t")
    await bus.ensure(upload_queue("demo"))
    settings = Settings(destination="demo", sentinel_requests_per_minute=50)
    uploader = gauge_reads(Service.UPLOADER, settings, redis_client, bus)
    assert sorted(uploader) == [
        "circuit",
        "rate_budget",
        "reconcile",
        "revocation_queue",
        "upload_queue",
    ]
    assert sorted(gauge_reads(Service.FILTER, settings, redis_client, bus)) == ["subscription"]
    fetcher = gauge_reads(Service.FETCHER, settings, redis_client, bus, ["contoso", "fabrikam"])
    assert sorted(fetcher) == ["fed", "feed"]
    fed = await fetcher["fed"]()
    assert [(name, attrs) for name, _, attrs in fed] == [
        ("mati2sentinel_destination_fed", {"destination": "contoso"}),
        ("mati2sentinel_destination_fed", {"destination": "fabrikam"}),
    ]
    # Without a destinations file, the fetcher feeds its own destination.
    (alone,) = await gauge_reads(Service.FETCHER, settings, redis_client, bus)["fed"]()
    assert alone == ("mati2sentinel_destination_fed", 1.0, {"destination": "demo"})

    await DestinationState(redis_client, "demo").set_circuit(CircuitState.OPEN, "auth")
    readings = [r for read in uploader.values() for r in await read()]
    values = {name: value for name, value, _ in readings}
    assert values["mati2sentinel_circuit_state"] == 2
    assert values["mati2sentinel_rate_budget_limit"] == 50
    assert values["mati2sentinel_rate_budget_requests"] == 0
    assert values["mati2sentinel_queue_depth"] == 0
    queues = {a["queue"] for name, _, a in readings if name == "mati2sentinel_queue_depth"}
    assert queues == {"upload.demo", "revoke.demo"}
    assert {attrs["destination"] for _, _, attrs in readings} == {"demo"}

    assert await uploader["reconcile"]() == [], "no reconcile yet: no made-up zeros"
    workspace = WorkspaceState(redis_client, DestinationState(redis_client, "demo"))
    at = datetime.now(UTC) - timedelta(minutes=10)
    for _ in range(2):
        await workspace.save_reconcile({"agreeing": 7, "missing": 3}, at=at, drift=True, extra={})
    drift = {
        (name, attrs.get("kind", "")): value for name, value, attrs in await uploader["reconcile"]()
    }
    assert drift[("mati2sentinel_reconcile_objects", "missing")] == 3
    assert drift[("mati2sentinel_reconcile_objects", "agreeing")] == 7
    assert drift[("mati2sentinel_reconcile_objects", "stale")] == 0
    assert drift[("mati2sentinel_reconcile_drift_streak", "")] == 2
    assert 600 <= drift[("mati2sentinel_reconcile_age_seconds", "")] < 700

    read_feed = gauge_reads(Service.FETCHER, settings, redis_client, bus)["feed"]
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
                found = samples(await response.text())
        async with http.get(url) as response:
            assert response.status == 404
        await DestinationState(redis_client, "demo").count({"uploaded": 1})  # not observed
    assert found[("mati2sentinel_indicators_uploaded_total", labels(destination="demo"))] == 5
    assert found[("mati2sentinel_circuit_state", labels(destination="demo"))] == 0
    queue = labels(destination="demo", queue="upload.demo")
    assert found[("mati2sentinel_queue_depth", queue)] == 0
    await bus.aclose()


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
