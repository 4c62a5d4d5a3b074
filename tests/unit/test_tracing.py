"""shared.telemetry.tracing: the W3C context a message carries, the spans' shape, logs that name
their trace, and the exporters chosen by ``OTEL_TRACES_EXPORTER``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.contract.bus import Message
from shared.contract.messages import raw_message
from shared.core.errors import ConfigError
from shared.telemetry import tracing
from shared.telemetry.logs import JsonFormatter, get_logger

RECORD = {"id": "md5--0123", "type": "md5", "value": "0" * 32, "last_updated": "2025-06-01"}

_EXPORTER = InMemorySpanExporter()
_ADDED: list[TracerProvider] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test, from the process's global provider (set once per process:
    the SDK refuses a second one, so an SDK provider already installed is reused)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = tracing.configure_tracing(
            "unit", {}, processors=[SimpleSpanProcessor(_EXPORTER)]
        )
        _ADDED.append(provider)
    if provider not in _ADDED:
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _ADDED.append(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def test_inject_then_extract_is_the_same_span(spans: InMemorySpanExporter) -> None:
    with tracing.span("page", {}, root=True) as page:
        properties = tracing.inject({"schema": "x"})
    assert properties["schema"] == "x"
    assert properties["traceparent"].startswith("00-")
    carried = trace.get_current_span(tracing.extract(properties)).get_span_context()
    assert carried.trace_id == page.get_span_context().trace_id
    assert carried.span_id == page.get_span_context().span_id
    assert carried.is_remote


def test_without_a_span_nothing_is_injected_and_garbage_extracts_to_nothing() -> None:
    assert tracing.inject({"a": "1"}) == {"a": "1"}
    for garbage in ({}, {"traceparent": "nonsense"}, {"traceparent": "00-" + "0" * 32 + "-x-01"}):
        assert not trace.get_current_span(tracing.extract(garbage)).get_span_context().is_valid
        assert tracing.link_to(garbage) is None


def test_messages_carry_the_context_they_are_given(spans: InMemorySpanExporter) -> None:
    with tracing.span("page", {}, root=True) as page:
        message = raw_message(RECORD, run_id="r", trace=tracing.inject({}))
    other = tracing.tracer().start_span("other")
    explicit = raw_message(RECORD, run_id="r", trace=tracing.inject({}, tracing.context_of(other)))
    other.end()
    for built, source in ((message, page), (explicit, other)):
        carried = trace.get_current_span(tracing.extract(built.properties)).get_span_context()
        assert carried.span_id == source.get_span_context().span_id
    # The content-derived id ignores the trace: a re-published copy is still a duplicate.
    assert message.message_id == explicit.message_id


def test_a_consumer_span_continues_the_message_trace_with_ids_only(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("page", {}, root=True) as page:
        message = raw_message(RECORD, run_id="r", trace=tracing.inject({}))
    attributes = tracing.destination_attributes(
        tracing.REDIS_STREAMS, "indicators", "process", subscription="demo"
    )
    consumer = tracing.consumer_span("filter indicator", message.properties, "m1", attributes)
    tracing.finish(consumer, "forwarded")
    done = _only(spans, "filter indicator")
    assert done.parent is not None
    assert done.parent.span_id == page.get_span_context().span_id
    assert done.context.trace_id == page.get_span_context().trace_id
    assert done.kind is trace.SpanKind.CONSUMER
    assert dict(done.attributes or {}) == {
        "messaging.system": "redis_streams",
        "messaging.destination.name": "indicators",
        "messaging.destination.subscription.name": "demo",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": "m1",
        "indicator.id": "md5--0123",
        "mati2sentinel.outcome": "forwarded",
    }


def test_a_batch_span_links_its_messages_and_records_errors_by_type_only(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("page", {}, root=True):
        messages = [
            raw_message({**RECORD, "id": f"md5--{i}"}, run_id="r", trace=tracing.inject({}))
            for i in range(3)
        ]
    unrelated = Message(b"{}", "no-context", {})
    links = tracing.links_to((m.properties, m.message_id) for m in [*messages, unrelated])
    with (
        pytest.raises(ValueError, match="secret-ish"),
        tracing.batch_span("filter batch", {"messaging.system": "x"}, links=links),
    ):
        raise ValueError("secret-ish detail")
    batch = _only(spans, "filter batch")
    assert batch.parent is None
    assert len(batch.links) == 3
    assert {link.attributes["messaging.message.id"] for link in batch.links if link.attributes} == {
        m.message_id for m in messages
    }
    assert (batch.attributes or {})["messaging.batch.message_count"] == 3
    assert (batch.attributes or {})["error.type"] == "ValueError"
    assert batch.status.description == "ValueError"
    assert not batch.events  # no exception event: its message may hold anything


def test_log_lines_name_the_span_they_were_logged_in(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    log = get_logger("tests.tracing")
    with caplog.at_level(logging.INFO, logger="tests.tracing"):
        log.info("outside.span")
        with tracing.span("page", {}, root=True) as page:
            log.info("inside.span")
    outside, inside = (orjson.loads(JsonFormatter().format(r)) for r in caplog.records)
    assert "trace_id" not in outside
    context = page.get_span_context()
    assert inside["trace_id"] == trace.format_trace_id(context.trace_id)
    assert inside["span_id"] == trace.format_span_id(context.span_id)


def test_exporters_come_from_otel_traces_exporter() -> None:
    assert tracing.exporter_names({}) == []
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp", "console"]
    with pytest.raises(ConfigError, match="jaeger"):
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "jaeger"})
    provider = tracing.configure_tracing(
        "filter", {"OTEL_TRACES_EXPORTER": "console"}, install=False
    )
    try:
        assert provider.resource.attributes["service.name"] == "mati2sentinel-filter"
        assert provider._active_span_processor._span_processors  # the console exporter's
    finally:
        tracing.shutdown(provider)


def test_the_bus_backend_names_the_messaging_system() -> None:
    from shared.adapters.redis_streams import RedisStreamsBus
    from shared.adapters.servicebus import ServiceBusBus

    class Wrapped(RedisStreamsBus):
        pass

    assert tracing.messaging_system(object.__new__(RedisStreamsBus)) == "redis_streams"
    assert tracing.messaging_system(object.__new__(Wrapped)) == "redis_streams"
    assert tracing.messaging_system(object.__new__(ServiceBusBus)) == "servicebus"


def test_without_an_exporter_spans_keep_their_ids_but_record_nothing() -> None:
    provider = tracing.configure_tracing("filter", {}, install=False)
    try:
        parent = provider.get_tracer("unit").start_span("fetch page")
        child = provider.get_tracer("unit").start_span(
            "filter indicator", context=trace.set_span_in_context(parent)
        )
        assert not parent.is_recording()
        assert not child.is_recording()
        assert child.get_span_context().is_valid, "ids still travel on messages and logs"
        assert child.get_span_context().trace_id == parent.get_span_context().trace_id
    finally:
        tracing.shutdown(provider)


def test_recording_follows_the_installed_provider(spans: InMemorySpanExporter) -> None:
    assert tracing.recording(), "the fixture's provider collects spans"


def test_a_message_made_without_a_span_carries_its_source_trace(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("fetch page", {}, root=True) as page:
        raw = raw_message(RECORD, run_id="r", trace=tracing.inject({}))
    forwarded = raw_message(RECORD, run_id="r2", trace=raw.properties)
    assert forwarded.properties["traceparent"] == raw.properties["traceparent"]
    untraced = raw_message(RECORD, run_id="r", trace={"schema": "x"})
    assert "traceparent" not in untraced.properties, "nothing to carry, nothing added"
    assert untraced.properties["schema"] != "x", "only the trace properties are carried"
    remote = tracing.remote(raw.properties)
    assert not remote.is_recording()
    assert remote.get_span_context().span_id == page.get_span_context().span_id
