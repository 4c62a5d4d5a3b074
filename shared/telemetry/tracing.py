"""Traces: one indicator's path fetcher → filter → uploader is one trace (DESIGN §9).

Everything trace-shaped lives here, so no service handles trace headers by hand:

- :func:`configure_tracing` sets up the OpenTelemetry SDK once per process. Exporters are
  chosen by the standard ``OTEL_TRACES_EXPORTER`` (``otlp`` for production, ``console``, or
  ``none``, the default); the OTLP/HTTP exporter, the batch processor and the sampler read
  their own standard ``OTEL_*`` variables. With no exporter nothing is recorded (the
  sampler is off), yet every span still gets its ids, so trace ids ride on the messages
  and on every log line; :func:`recording` tells the hot paths they may skip per-message
  spans altogether.
- :func:`inject` / :func:`extract` carry the W3C trace context (``traceparent``,
  ``tracestate``) in a message's application properties, on both bus backends.
  ``shared.contract.messages`` injects when it builds a message, so a message carries the context of
  the span it was made in.
- :func:`consumer_span`, :func:`producer_span`, :func:`batch_span` make spans with the
  messaging semantic-convention attributes; :func:`message_attributes` adds the indicator's
  identity. Spans carry ids, counts and outcomes, never a payload, a URL with a query or an
  exception message (which a third party may have filled with a secret): errors are recorded
  by type only.

The shape of one page's trace: ``fetch page`` (root) → ``filter indicator`` (one per raw
message, parent = the context the message carried) → ``upload indicator`` (one per upload
message, parent = the context it carried). Batch spans (``filter batch``, ``upload request``)
stand on their own and *link* every message they handled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import INVALID_SPAN as INVALID_SPAN  # re-exported for the services
from opentelemetry.trace import Link, Span, Status, StatusCode
from opentelemetry.trace import SpanKind as SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.contract.messages import TRACE_PROPERTIES
from shared.core.errors import ConfigError

logger = logging.getLogger(__name__)

SERVICE_PREFIX: Final = "mati2sentinel-"
INSTRUMENTATION: Final = "mati2sentinel"
#: The W3C trace-context keys a message carries (the Service Bus SDK reads the same ones).
#: ``messaging.system`` values; Service Bus is the semantic conventions' ``servicebus``.
REDIS_STREAMS: Final = "redis_streams"
SERVICEBUS: Final = "servicebus"
#: A filter batch holds up to 500 messages and links each one: more than the SDK's default
#: 128 links a span (``OTEL_SPAN_LINK_COUNT_LIMIT`` still decides when set).
DEFAULT_MAX_LINKS: Final = 1000

# W3C trace context only, whatever OTEL_PROPAGATORS says: the messages' contract is the
# standard ``traceparent``/``tracestate`` pair, not a process setting.
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_EXPORTERS: Final = ("otlp", "otlp_proto_http", "console", "none")
_BUS_SYSTEMS: Final = {"RedisStreamsBus": REDIS_STREAMS, "ServiceBusBus": SERVICEBUS}


def tracer() -> trace.Tracer:
    """The tracer every span of ours comes from (the global provider, configured or not)."""
    return trace.get_tracer(INSTRUMENTATION)


# ---- set-up --------------------------------------------------------------------------------


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """``OTEL_TRACES_EXPORTER`` as a list (``none`` and empty mean none); ``ConfigError``
    names an exporter this build does not have."""
    raw = environ.get("OTEL_TRACES_EXPORTER", "none")
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in _EXPORTERS]
    if unknown:
        raise ConfigError(
            [f"OTEL_TRACES_EXPORTER={raw!r}: {', '.join(unknown)} unknown; use otlp, console, none"]
        )
    return [name for name in names if name != "none"]


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    # Imported here: ``requests`` and protobuf cost start-up time a process without OTLP skips.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Endpoint, headers, timeout, compression and certificate come from the standard
    # OTEL_EXPORTER_OTLP_[TRACES_]* variables, read by the exporter itself.
    return OTLPSpanExporter()


def configure_tracing(
    service_name: str,
    environ: Mapping[str, str],
    *,
    install: bool = True,
    processors: Sequence[SpanProcessor] = (),
) -> TracerProvider:
    """A provider for ``mati2sentinel-<service_name>`` with the exporters ``environ`` names
    (and ``processors``, for tests that collect spans in memory).

    With nowhere to send spans the sampler is off: recording spans nobody reads cost the
    filter a fifth of its time. Otherwise the SDK's sampler applies (``OTEL_TRACES_SAMPLER``,
    parent-based always-on by default).

    With ``install`` it becomes the process's global provider (once per process; the SDK
    ignores a second one), and when it exports, the Azure SDK's own spans (Service Bus,
    identity) are made through OpenTelemetry too, so they join the same traces.
    """
    names = exporter_names(environ)
    limit = environ.get("OTEL_SPAN_LINK_COUNT_LIMIT")
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"{SERVICE_PREFIX}{service_name}"}),
        span_limits=SpanLimits(max_links=int(limit) if limit else DEFAULT_MAX_LINKS),
        sampler=None if names or processors else ALWAYS_OFF,
    )
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    for processor in processors:
        provider.add_span_processor(processor)
    if install:
        trace.set_tracer_provider(provider)
        if names:
            enable_azure_sdk_tracing()
    return provider


def recording() -> bool:
    """Whether spans made now are recorded anywhere; when not, a hot path may skip the
    spans (and the links) it makes per message, as long as the trace context still travels
    with what it forwards."""
    provider = trace.get_tracer_provider()
    return isinstance(provider, TracerProvider) and provider.sampler is not ALWAYS_OFF


def enable_azure_sdk_tracing() -> None:
    """Route azure-core's tracing (Service Bus send/receive/settle, identity) through
    OpenTelemetry: those spans become children of whatever span of ours is current."""
    from azure.core.settings import settings

    settings.tracing_implementation = "opentelemetry"


@contextmanager
def configured(service_name: str, environ: Mapping[str, str]) -> Iterator[TracerProvider]:
    """Tracing for a service's lifetime: spans still buffered are exported at the end."""
    provider = configure_tracing(service_name, environ)
    try:
        yield provider
    finally:
        shutdown(provider)


def shutdown(provider: TracerProvider) -> None:
    """Flush and close the exporters; a collector that is away costs its timeout, no crash."""
    try:
        provider.shutdown()
    except Exception:  # telemetry must never fail a clean stop
        logger.warning("tracing shutdown failed", exc_info=True)


# ---- context on messages -------------------------------------------------------------------


def inject(properties: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add ``traceparent`` (and ``tracestate``) of ``context`` (default: the current one) to
    ``properties``; nothing when there is no valid span. Returns ``properties``."""
    _PROPAGATOR.inject(properties, context=context)
    return properties


def extract(properties: Mapping[str, str]) -> Context:
    """The context a message carried (an empty one when it carried none or a garbled one)."""
    carrier = {key: properties[key] for key in TRACE_PROPERTIES if key in properties}
    return _PROPAGATOR.extract(carrier, context=Context())


def remote(properties: Mapping[str, str]) -> Span:
    """A non-recording span standing for the context a message carried: log lines written
    within it name that trace when no span of ours was made for the message."""
    return trace.get_current_span(extract(properties))


def link_to(properties: Mapping[str, str], **attributes: str) -> Link | None:
    """A link to the span a message was made in, or None when it carried no context."""
    span_context = trace.get_current_span(extract(properties)).get_span_context()
    if not span_context.is_valid:
        return None
    return Link(span_context, attributes or None)


def links_to(messages: Iterable[tuple[Mapping[str, str], str]]) -> list[Link]:
    """Links to each ``(properties, message_id)``'s context, skipping those without one."""
    links = (link_to(properties, **{"messaging.message.id": mid}) for properties, mid in messages)
    return [link for link in links if link is not None]


# ---- messaging spans -----------------------------------------------------------------------


def messaging_system(bus: object) -> str:
    """``messaging.system`` of a bus (a wrapper subclassing a backend counts as it)."""
    for cls in type(bus).__mro__:
        if cls.__name__ in _BUS_SYSTEMS:
            return _BUS_SYSTEMS[cls.__name__]
    return getattr(bus, "messaging_system", REDIS_STREAMS)


def destination_attributes(
    system: str, destination: str, operation: str, *, subscription: str | None = None
) -> dict[str, str]:
    """The semantic conventions' messaging attributes for one operation on one entity;
    ``operation`` is ``publish``, ``receive``, ``process`` or ``settle``."""
    attributes = {
        "messaging.system": system,
        "messaging.destination.name": destination,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    if subscription is not None:
        attributes["messaging.destination.subscription.name"] = subscription
    return attributes


def message_attributes(properties: Mapping[str, str], message_id: str) -> dict[str, str]:
    """Who a message is about: its id, the MATI indicator id and the STIX id. Ids only:
    never the body, which is the whole (third-party) record."""
    attributes = {"messaging.message.id": message_id}
    if properties.get("indicator_id"):
        attributes["indicator.id"] = properties["indicator_id"]
    if properties.get("stix_id"):
        attributes["stix.id"] = properties["stix_id"]
    return attributes


def consumer_span(
    name: str,
    properties: Mapping[str, str],
    message_id: str,
    attributes: Mapping[str, str | int],
    *,
    links: Sequence[Link] = (),
) -> Span:
    """A started (not current) span for one received message, child of the context the
    message carried: this is what makes the path of one indicator one trace. End it with
    :func:`finish`."""
    return tracer().start_span(
        name,
        context=extract(properties),
        kind=SpanKind.CONSUMER,
        attributes={**attributes, **message_attributes(properties, message_id)},
        links=links,
        record_exception=False,
    )


@contextmanager
def batch_span(
    name: str,
    attributes: Mapping[str, str | int],
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    links: Sequence[Link] = (),
) -> Iterator[Span]:
    """A current span of its own trace for work on many messages (which it links); an
    exception leaving it is recorded by type only."""
    with _errors_by_type(
        tracer().start_as_current_span(
            name,
            context=Context(),
            kind=kind,
            attributes={"messaging.batch.message_count": len(links), **attributes},
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
    ) as span:
        yield span


@contextmanager
def producer_span(
    system: str, destination: str, count: int, *, name: str | None = None
) -> Iterator[Span]:
    """A current child span around one ``Bus.publish`` of ``count`` messages."""
    attributes: dict[str, str | int] = {
        **destination_attributes(system, destination, "publish"),
        "messaging.batch.message_count": count,
    }
    with _errors_by_type(
        tracer().start_as_current_span(
            name or f"publish {destination}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
    ) as span:
        yield span


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, str | int],
    *,
    root: bool = False,
    start_time: int | None = None,
) -> Iterator[Span]:
    """A current span (a new trace with ``root``; begun at ``start_time``, in ns since the
    epoch, when the work started before the span could be named); errors by type only."""
    with _errors_by_type(
        tracer().start_as_current_span(
            name,
            context=Context() if root else None,
            attributes=attributes,
            start_time=start_time,
            record_exception=False,
            set_status_on_exception=False,
        )
    ) as current:
        yield current


@contextmanager
def _errors_by_type(manager: AbstractContextManager[Span]) -> Iterator[Span]:
    with manager as current:
        try:
            yield current
        except BaseException as exc:
            fail(current, exc)
            raise


def fail(target: Span, error: BaseException | str) -> None:
    """Mark ``target`` failed with the error's type (``error.type``), never its message."""
    kind = error if isinstance(error, str) else type(error).__name__
    target.set_attribute("error.type", kind)
    target.set_status(Status(StatusCode.ERROR, kind))


def finish(target: Span, outcome: str, *, error: bool = False) -> None:
    """End a message span with what became of the message (``mati2sentinel.outcome``)."""
    if not target.is_recording():
        return
    target.set_attribute("mati2sentinel.outcome", outcome)
    if error:
        fail(target, outcome)
    target.end()


def within(target: Span) -> AbstractContextManager[Span]:
    """Make a started span current for a block without ending it (log lines inside it carry
    its ids; spans started inside are its children)."""
    return trace.use_span(target, end_on_exit=False)


def context_of(target: Span) -> Context:
    """The context to build a message in so it carries ``target``'s trace (``inject``)."""
    return trace.set_span_in_context(target, Context())


def link_span(target: Span, **attributes: str) -> Link:
    """A link to ``target`` (from a span of another trace that worked on the same thing)."""
    return Link(target.get_span_context(), attributes or None)
