"""What /metrics says after a sync, checked against what the simulated workspace
received and what the feed must give: the funnel counters add up, the queue gauges say empty,
the circuit is closed, the latency histogram saw every request, and no scraped line carries a
configured secret.

Every service runs as its own process (two uploaders, so the uploader's counters are summed
the way a dashboard sums replicas) and is scraped on the health port it logged at start.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from functools import partial

import aiohttp
import pytest

from harness.pipeline import DESTINATION, Pipeline
from simulators.feed import Feed
from tests.dashboards import referenced_metrics
from tests.e2e.pipeline_tools import PipelineFactory, log_events, synced_and_drained
from tests.helpers import samples, wait_for

UPLOADERS = ("uploader-1", "uploader-2")
SUBSCRIPTION, UPLOAD = f"indicators/{DESTINATION}", f"upload.{DESTINATION}"
SERVICES = ("fetcher", "filter", *UPLOADERS)
#: A few hundred of these are accepted and uploaded in several requests, the rest dropped for
#: low confidence, threat score or OSINT: every count moves. The funnel adds up the same at any
#: size, so a demo's 20,000 only made the test slower (the dashboard's needs the long run).
FEED_SIZE = 2_000


class Scrape:
    """One service's /metrics: the raw text, and ``value(name, **labels)``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = samples(text)

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset({"destination": DESTINATION, **labels}.items())))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``{label value: sample value}`` of every ``name`` sample carrying ``label``."""
        found: dict[str, float] = {}
        for (sample, labels), value in self.samples.items():
            values = dict(labels)
            if sample == name and label in values:
                found[values[label]] = found.get(values[label], 0) + value
        return found


def health_port(pipeline: Pipeline, label: str) -> int | None:
    for event in log_events(pipeline, label):
        if event.get("event") == "service.started":
            return int(event["health_port"])
    return None


async def scrape_all(http: aiohttp.ClientSession, ports: Mapping[str, int]) -> dict[str, Scrape]:
    async def one(port: int) -> Scrape:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            return Scrape(await response.text())

    scrapes = await asyncio.gather(*(one(ports[label]) for label in SERVICES))
    return dict(zip(SERVICES, scrapes, strict=True))


def served_by_mati(pipeline: Pipeline) -> list[int]:
    """The feed indexes MATI served the fetcher's sync: its window (as the fetcher rounds it
    to whole seconds; no filter is pushed down), so what the filter dropped can be compared
    with what it was given rather than with the whole feed."""
    (finished,) = [
        e for e in log_events(pipeline, "fetcher") if e["event"] == "fetch.sync_finished"
    ]
    start = datetime.fromisoformat(finished["window_start"])
    end = datetime.fromisoformat(finished["window_end"])
    return pipeline.feed.window_ms(
        math.floor(start.timestamp()) * 1000,
        math.ceil(end.timestamp()) * 1000,
    )


def total(scrapes: Mapping[str, Scrape], labels: tuple[str, ...], name: str) -> float:
    return sum(scrapes[label].value(name) or 0 for label in labels)


@pytest.mark.timeout(90)
async def test_metrics_after_a_sync_match_the_workspace(
    make_pipeline: PipelineFactory,
) -> None:
    pipeline = await make_pipeline(feed=Feed(seed=7, count=FEED_SIZE, days=29))
    await pipeline.start_service("filter")
    for label in UPLOADERS:
        await pipeline.start_service("uploader", label=label)
    await pipeline.start_service("fetcher")  # syncs at start, then sleeps for the schedule
    ports: dict[str, int] = {}
    for label in SERVICES:
        ports[label] = await wait_for(partial(health_port, pipeline, label), 30, what=label)

    store = await synced_and_drained(pipeline)
    served = served_by_mati(pipeline)
    expected = pipeline.expected(pipeline.feed.records(served))
    assert set(store) == set(expected.objects)
    assert store
    # An operator's reconcile: its result is exported by the uploaders from then on.
    assert await pipeline.command("reconcile", "--quiet", label="reconcile", timeout_s=120) == 0

    async with aiohttp.ClientSession() as http:

        async def settled() -> dict[str, Scrape] | None:
            # Counts reach Redis (and so /metrics) just after the messages they describe are
            # settled, and gauges are re-read at most once a second: poll until both caught up.
            scrapes = await scrape_all(http, ports)
            uploaded = total(scrapes, UPLOADERS, "mati2sentinel_indicators_uploaded_total")
            queue = scrapes[UPLOADERS[0]].value(
                "mati2sentinel_queue_in_flight", queue="upload.demo"
            )
            reconciled = scrapes[UPLOADERS[0]].value("mati2sentinel_reconcile_drift_streak")
            done = uploaded == len(store) and queue == 0 and reconciled is not None
            return scrapes if done else None

        scrapes = await wait_for(settled, 20, what="metrics to catch up", interval=0.2)

    fetcher, filter_ = scrapes["fetcher"], scrapes["filter"]
    feed_counters, destination_counters = await pipeline.counters()

    # The workspace: every object Sentinel stored was counted uploaded once, by some uploader.
    uploaded = total(scrapes, UPLOADERS, "mati2sentinel_indicators_uploaded_total")
    assert uploaded == len(store) == sum(pipeline.sims.sentinel.uploads_for(k) for k in store)
    assert uploaded == destination_counters["uploaded"]

    # The funnel, fetcher -> filter -> uploader.
    fetched = fetcher.value("mati2sentinel_indicators_fetched_total")
    assert fetched == feed_counters["fetched"] == len(served)
    assert fetcher.value("mati2sentinel_indicators_published_total") == fetched
    assert fetcher.value("mati2sentinel_pages_fetched_total") == feed_counters["pages"]
    assert fetcher.value("mati2sentinel_syncs_total", outcome="completed") == 1
    # The destination it feeds, for the alert on a destination nobody serves.
    assert fetcher.value("mati2sentinel_destination_fed", destination=DESTINATION) == 1
    assert filter_.value("mati2sentinel_indicators_received_total") == fetched
    drops = {
        f"dropped_{reason}": value
        for reason, value in filter_.by_label(
            "mati2sentinel_indicators_dropped_total", "reason"
        ).items()
        if value
    } | {
        f"rejected_{reason}": value
        for reason, value in filter_.by_label(
            "mati2sentinel_indicators_rejected_total", "reason"
        ).items()
        if value
    }
    assert drops == expected.drops
    outcomes_in_filter = sum(drops.values()) + sum(
        filter_.value(f"mati2sentinel_{name}_total") or 0
        for name in ("indicators_failed", "indicators_forwarded", "messages_abandoned")
    )
    assert outcomes_in_filter == filter_.value("mati2sentinel_indicators_received_total")
    forwarded = filter_.value("mati2sentinel_indicators_forwarded_total")
    assert forwarded == len(expected.objects)
    assert filter_.by_label("mati2sentinel_indicators_forwarded_by_reason_total", "reason") == {
        "new": forwarded,
        "changed": 0,
        "refresh": 0,
        "revoke": 0,
    }
    settled_upstream = sum(
        total(scrapes, UPLOADERS, name)
        for name in (
            "mati2sentinel_indicators_uploaded_total",
            "mati2sentinel_indicators_superseded_total",
            "mati2sentinel_indicators_already_uploaded_total",
            "mati2sentinel_messages_dead_lettered_total",
        )
    )
    assert forwarded == settled_upstream
    assert total(scrapes, UPLOADERS, "mati2sentinel_messages_dead_lettered_total") == 0
    assert total(scrapes, UPLOADERS, "mati2sentinel_upload_throttled_total") == 0

    # Upload latency: one observation per request, all accepted.
    requests = total(scrapes, UPLOADERS, "mati2sentinel_upload_requests_total")
    assert requests == destination_counters["requests"] > 0
    outcomes: Counter[str] = Counter()
    for label in UPLOADERS:
        counts = scrapes[label].by_label(
            "mati2sentinel_upload_request_duration_seconds_count", "outcome"
        )
        outcomes.update({outcome: int(n) for outcome, n in counts.items()})
    assert outcomes == {"accepted": requests}

    # Gauges: each from the service that owns it.
    for scrape, queue in ((filter_, SUBSCRIPTION), (scrapes[UPLOADERS[0]], UPLOAD)):
        for gauge in ("depth", "in_flight", "dead_letters", "oldest_message_age_seconds"):
            assert scrape.value(f"mati2sentinel_queue_{gauge}", queue=queue) == 0, (queue, gauge)
    for label in UPLOADERS:
        uploader = scrapes[label]
        assert uploader.value("mati2sentinel_circuit_state") == 0
        assert uploader.value("mati2sentinel_rate_budget_limit") == 100
        used = uploader.value("mati2sentinel_rate_budget_requests")
        assert used is not None
        assert 0 <= used <= 100
        assert uploader.value("mati2sentinel_rate_budget_pause_seconds") == 0
        assert uploader.value("mati2sentinel_queue_depth", queue=SUBSCRIPTION) is None
        assert uploader.value("mati2sentinel_reconcile_drift_streak") == 0
        assert uploader.value("mati2sentinel_reconcile_objects", kind="missing") == 0
        in_grace = uploader.value("mati2sentinel_reconcile_objects", kind="in_flight")
        agreeing = uploader.value("mati2sentinel_reconcile_objects", kind="agreeing")
        assert (in_grace or 0) + (agreeing or 0) == len(store)
    saved_age = fetcher.value("mati2sentinel_checkpoint_saved_age_seconds")
    assert saved_age is not None
    assert 0 <= saved_age < 120
    assert fetcher.value("mati2sentinel_checkpoint_age_seconds") is not None
    assert fetcher.value("mati2sentinel_last_sync_completed") == 1
    sync_age = fetcher.value("mati2sentinel_last_sync_age_seconds")
    assert sync_age is not None
    assert 0 <= sync_age < 120

    # Every metric the dashboard and the alert rules use is in these scrapes.
    scraped = {name for scrape in scrapes.values() for name, _ in scrape.samples}
    scraped |= {name.removesuffix(suffix) for name in scraped for suffix in ("_bucket", "_count")}
    missing = sorted(referenced_metrics() - scraped)
    assert not missing, (
        f"the dashboard or the alert rules use metrics no service exports: {missing}"
    )

    # Nothing secret anywhere in any scrape, labels included.
    secrets = [pipeline.env[name] for name in ("MATI_API_KEY", "MATI_API_SECRET")]
    secrets.append(pipeline.env["AZURE_CLIENT_SECRET"])
    for label, scrape in scrapes.items():
        for secret in secrets:
            assert secret not in scrape.text, f"a secret in {label}'s /metrics"
        for _, labels in scrape.samples:
            for _, value in labels:
                assert not any(secret in value for secret in secrets)
