"""Metrics without a peer: the counter-name mapping, counts mirrored into instruments with their
labels, gauges served from their cache and going stale, and the exporters
``OTEL_METRICS_EXPORTER`` chooses. What needs Redis, an HTTPS route or the probes server is in
tests/integration/test_metrics.py."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.errors import ConfigError
from shared.core.settings import Service
from shared.telemetry.gauges import GaugeCache, Reading
from shared.telemetry.metrics import EVENTS, EXACT, PREFIXED, Metrics, counter_for, exporter_readers
from tests.helpers import labels, scrape

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


# ---- exporters ----------------------------------------------------------------------------


def test_exporters_follow_otel_metrics_exporter() -> None:
    assert exporter_readers({}) == []
    assert exporter_readers({"OTEL_METRICS_EXPORTER": "prometheus"}) == []
    assert exporter_readers({"OTEL_METRICS_EXPORTER": "none"}) == []
    with pytest.raises(ConfigError, match="unknown"):
        exporter_readers({"OTEL_METRICS_EXPORTER": "otlp,zipkin"})
    with pytest.raises(ConfigError, match="http/protobuf"):
        exporter_readers({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
