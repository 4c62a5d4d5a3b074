"""Metrics: the funnel counters, queue and state gauges and upload latency, over OpenTelemetry.

Where the numbers come from
===========================

- **Counters** mirror the outcome counters every service already keeps in Redis
  (``FeedState.count`` / ``DestinationState.count``):
  ``shared.adapters.state_counters.observe_counts`` tells us of every count Redis took, and
  ``counter_for`` maps its name to an instrument and a label (``dropped_low_confidence`` ->
  ``mati2sentinel_indicators_dropped{reason="low_confidence"}``). The mapping is total: a name
  nobody listed lands in ``mati2sentinel_events{event=...}``, so a new count is never lost, only
  less well named. Services need no metrics code at all, and ``status`` (Redis) and /metrics (this
  process since it started) use the same names.
- **Gauges** (queue depth and oldest message, checkpoint age, circuit, rate budget) are read
  from Redis and the bus into a cache the instruments' callbacks return (shared.telemetry.gauges);
  each service reports only what it owns.
- **Upload latency**: ``shared.adapters.sentinel_client.observe_requests`` times every upload call.

Export: Prometheus text on ``/metrics`` of the probes port (shared.telemetry.health), always; OTLP
too when ``OTEL_METRICS_EXPORTER`` lists ``otlp`` (endpoint, headers, interval: the standard
``OTEL_*`` variables). Every label value is a code constant, the destination or a queue name,
never a record field or an error message: bounded cardinality and nothing secret.
docs/metrics.md lists every name for dashboards and alerts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Counter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.core.errors import ConfigError
from shared.core.filters import DropReason
from shared.core.fingerprint import ForwardReason
from shared.core.parsing import RejectReason
from shared.core.settings import Service
from shared.telemetry import logs
from shared.telemetry.gauges import GAUGES, GaugeCache

log = logs.get_logger(__name__)

#: A scrape reads the gauges again unless the cache is younger than this.
SCRAPE_FRESH_S: Final = 1.0
#: A scrape waits at most this long for fresh gauges, then serves what the cache holds.
SCRAPE_WAIT_S: Final = 2.0
#: Upload latency buckets, seconds: a healthy request takes well under a second; Sentinel
#: at its limits, several; a timeout, the client's 60 s.
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_FETCHER = frozenset({Service.FETCHER})
_FILTER = frozenset({Service.FILTER})
_UPLOADER = frozenset({Service.UPLOADER})
_LABEL_VALUE: Final = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")


# ---- counters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Family:
    """One counter instrument. Prometheus shows ``name`` + ``_total``; OTLP shows ``name``.
    ``label`` names the attribute that carries what follows the counter name's prefix;
    ``services`` are those whose scrape shows it (at 0) before its first count."""

    name: str
    description: str
    label: str | None = None
    unit: str = "1"
    services: frozenset[Service] = frozenset()

    @property
    def prometheus_name(self) -> str:
        return f"{self.name}_total"


def _family(name: str, description: str, services: frozenset[Service], unit: str = "1") -> Family:
    return Family(f"mati2sentinel_{name}", description, None, unit, services)


#: Counter names taken whole.
EXACT: Final[Mapping[str, Family]] = {
    "fetched": _family("indicators_fetched", "Indicators read from MATI.", _FETCHER),
    "published": _family("indicators_published", "Indicators published to the topic.", _FETCHER),
    "pages": _family("pages_fetched", "MATI pages read.", _FETCHER),
    "without_last_updated": _family(
        "indicators_undated", "Fetched indicators without last_updated.", _FETCHER
    ),
    "last_updated_after_window": _family(
        "indicators_after_window", "Fetched indicators updated after the sync window.", _FETCHER
    ),
    "cursor_restarts": _family(
        "cursor_restarts", "Sync windows restarted after an expired cursor.", _FETCHER
    ),
    "received": _family("indicators_received", "Raw indicators the filter received.", _FILTER),
    "forwarded": _family(
        "indicators_forwarded", "Indicators the filter queued for upload.", _FILTER
    ),
    "failed": _family(
        "indicators_failed", "Indicators the filter failed on (dead-lettered).", _FILTER
    ),
    "uploaded": _family("indicators_uploaded", "Indicators Sentinel accepted.", _UPLOADER),
    "rejected": _family(
        "sentinel_rejected", "Indicators Sentinel refused (dead-lettered).", _UPLOADER
    ),
    "superseded": _family(
        "indicators_superseded", "Queued versions skipped: a newer one is queued.", _UPLOADER
    ),
    "already_uploaded": _family(
        "indicators_already_uploaded", "Queued indicators found uploaded already.", _UPLOADER
    ),
    "requests": _family("upload_requests", "Upload requests sent to Sentinel.", _UPLOADER),
    "throttled": _family("upload_throttled", "Upload requests answered 429.", _UPLOADER),
    "throttle_wait_seconds": _family(
        "upload_throttle_wait_seconds", "Seconds Sentinel's 429s asked to wait.", _UPLOADER, "s"
    ),
    "retried": _family(
        "upload_retries", "Upload requests retried after 5xx/timeout/bad answer.", _UPLOADER
    ),
    "split": _family("upload_splits", "Batches split after a 400 that named no record.", _UPLOADER),
    "systemic_rejection": _family(
        "upload_systemic_rejections",
        "Upload requests refused for a cause no record owns (circuit opened, nothing lost).",
        _UPLOADER,
    ),
    "circuit_opened": _family("circuit_opened", "Times the circuit opened.", _UPLOADER),
    "dead_lettered": _family("messages_dead_lettered", "Upload messages dead-lettered.", _UPLOADER),
    "abandoned": _family(
        "messages_abandoned", "Messages given back to the bus unsettled.", _FILTER | _UPLOADER
    ),
    "lock_lost": _family(
        "messages_lock_lost", "Messages whose lock expired before settling.", _FILTER | _UPLOADER
    ),
}

#: Counter names ``<prefix><label value>``; the longest matching prefix wins.
PREFIXED: Final[Sequence[tuple[str, Family]]] = (
    (
        "dead_lettered_",
        Family(
            "mati2sentinel_messages_dead_lettered_by_reason",
            "Upload messages dead-lettered, by reason.",
            "reason",
        ),
    ),
    (
        "forwarded_",
        Family(
            "mati2sentinel_indicators_forwarded_by_reason",
            "Indicators queued for upload, by why (new, changed, refresh, revoke).",
            "reason",
            services=_FILTER,
        ),
    ),
    (
        "revoked_",
        Family(
            "mati2sentinel_indicators_revoked",
            "Indicators queued for upload as revoked (failing, or suppressed), by reason.",
            "reason",
            services=_FILTER,
        ),
    ),
    (
        "rejected_",
        Family(
            "mati2sentinel_indicators_rejected",
            "Raw records the filter could not parse (dead-lettered), by reason.",
            "reason",
        ),
    ),
    (
        "dropped_",
        Family("mati2sentinel_indicators_dropped", "Indicators dropped, by reason.", "reason"),
    ),
    ("sync_", Family("mati2sentinel_syncs", "Syncs finished, by outcome.", "outcome")),
)

#: Label values shown at 0 ahead of their first count, per service and counter prefix:
#: the enums the filter counts by, its deduplication drops and suppressions (services/filter); the
#: fetcher's sync outcomes (``services.fetcher.sync.Outcome``), so that ``increase()`` counts
#: the first sync of each outcome too (Prometheus never saw a series that starts at 1 move).
AHEAD: Final[Mapping[Service, Mapping[str, tuple[str, ...]]]] = {
    Service.FETCHER: {
        "sync_": ("completed", "stopped", "lease_lost", "failed", "standby"),
    },
    Service.FILTER: {
        "dropped_": (
            *(r.value for r in DropReason),
            "unchanged",
            "in_flight",
            "stale",
            "suppressed",
        ),
        "rejected_": tuple(r.value for r in RejectReason),
        "forwarded_": tuple(r.value for r in ForwardReason),
        "revoked_": (*(r.value for r in DropReason), "hash_type_unselected", "suppressed"),
    },
}

#: Where a counter name nobody mapped goes, so nothing counted is lost.
EVENTS: Final = Family("mati2sentinel_events", "Other counted events, by name.", "event")
LATENCY: Final = "mati2sentinel_upload_request_duration_seconds"


def counter_for(name: str) -> tuple[Family, str | None]:
    """The instrument a counter name adds to, and its label's value (None: no label)."""
    family = EXACT.get(name)
    if family is not None:
        return family, None
    for prefix, prefixed in sorted(PREFIXED, key=lambda entry: -len(entry[0])):
        value = name[len(prefix) :]
        if name.startswith(prefix) and _LABEL_VALUE.fullmatch(value):
            return prefixed, value
    return EVENTS, re.sub(r"[^a-z0-9_]", "_", name.lower())[:64] or "unnamed"


# ---- the meter -----------------------------------------------------------------------------


class Metrics:
    """One process's instruments, its Prometheus registry and its exporters."""

    def __init__(
        self,
        *,
        service: Service,
        destination: str,
        gauges: GaugeCache | None = None,
        readers: Sequence[MetricReader] = (),
        resource: Resource | None = None,
    ) -> None:
        self.service = Service(service)
        self.destination = destination
        self.gauges = gauges if gauges is not None else GaugeCache({})
        self.gauges.on_failure(self.gauge_failed)
        #: Private, not prometheus_client's global one: nothing else lands in our /metrics.
        self.registry = CollectorRegistry()
        prometheus = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        self.provider = MeterProvider(
            metric_readers=[prometheus, *readers],
            resource=resource or service_resource(self.service),
        )
        self._meter = self.provider.get_meter("mati2sentinel")
        self._counters: dict[str, Counter] = {}
        self._latency = self._meter.create_histogram(
            LATENCY.removesuffix("_seconds"),
            unit="s",
            description="Sentinel upload calls, by outcome (a fresh token included).",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        for gauge in GAUGES:
            self._meter.create_observable_gauge(
                gauge.name,
                callbacks=[self._callback(gauge.name)],
                unit=gauge.unit,
                description=gauge.description,
            )
        self._initialise()

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return self.gauges.observe(name)

        return observe

    def _counter(self, family: Family) -> Counter:
        counter = self._counters.get(family.name)
        if counter is None:
            counter = self._meter.create_counter(
                family.name, unit=family.unit, description=family.description
            )
            self._counters[family.name] = counter
        return counter

    def _initialise(self) -> None:
        """This service's counters at 0, so a dashboard or alert finds them before their first
        count; a labelled one is shown ahead for the label values known here."""
        attributes = {"destination": self.destination}
        for family in EXACT.values():
            if self.service in family.services:
                self._counter(family).add(0, attributes)
        for prefix, values in AHEAD.get(self.service, {}).items():
            family = dict(PREFIXED)[prefix]
            label = family.label
            if label is not None:
                for value in values:
                    self._counter(family).add(0, {**attributes, label: value})

    def counted(self, destination: str, counts: Mapping[str, int]) -> None:
        """Mirror counts Redis took (``shared.adapters.state_counters.observe_counts``); the
        feed's come with ``""`` and are labelled with this process's destination."""
        for name, amount in counts.items():
            if amount <= 0:
                continue
            family, value = counter_for(name)
            attributes = {"destination": destination or self.destination}
            if family.label is not None and value is not None:
                attributes[family.label] = value
            self._counter(family).add(amount, attributes)

    def requested(self, seconds: float, outcome: str) -> None:
        """One Sentinel upload call (``shared.adapters.sentinel_client.observe_requests``)."""
        self._latency.record(seconds, {"destination": self.destination, "outcome": outcome})

    def gauge_failed(self, part: str) -> None:
        self._counter(GAUGE_FAILURES).add(1, {"destination": self.destination, "part": part})

    async def scrape(self) -> tuple[bytes, str]:
        """``/metrics``: fresh gauges (if they come within ``SCRAPE_WAIT_S``), then the text."""
        try:
            async with asyncio.timeout(SCRAPE_WAIT_S):
                await self.gauges.refresh(if_older_than_s=SCRAPE_FRESH_S)
        except TimeoutError:
            log.warning("metrics.scrape_stale", waited_s=SCRAPE_WAIT_S)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush the exporters (a last OTLP export) and stop them; blocking."""
        self.provider.shutdown(timeout_millis=timeout_s * 1000)


GAUGE_FAILURES: Final = Family(
    "mati2sentinel_gauge_read_failures", "Failed reads of a gauge part, by part.", "part"
)


def service_resource(service: Service) -> Resource:
    """``service.name`` ``mati2sentinel-<service>`` unless ``OTEL_SERVICE_NAME`` says
    otherwise; ``OTEL_RESOURCE_ATTRIBUTES`` adds to it (the SDK reads both)."""
    return Resource.create(
        {"service.name": f"mati2sentinel-{service.value}", "service.namespace": "mati2sentinel"}
    )


def exporter_readers(environ: Mapping[str, str]) -> list[MetricReader]:
    """The push exporters ``OTEL_METRICS_EXPORTER`` asks for (comma-separated: ``otlp``,
    ``prometheus``, ``none``; default ``prometheus``). /metrics is served whatever it says:
    it is pull-only, costs nothing unscraped, and KEDA or Prometheus may rely on it."""
    names = {
        name.strip().lower()
        for name in environ.get("OTEL_METRICS_EXPORTER", "prometheus").split(",")
        if name.strip()
    }
    unknown = sorted(names - {"otlp", "prometheus", "none"})
    if unknown:
        raise ConfigError([f"OTEL_METRICS_EXPORTER: unknown exporter(s) {unknown}"])
    if "otlp" not in names:
        return []
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise ConfigError(
            [f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only http/protobuf is installed"]
        )
    # Imported only when asked for; it reads its endpoint, headers and timeout from OTEL_*.
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return [PeriodicExportingMetricReader(OTLPMetricExporter())]
