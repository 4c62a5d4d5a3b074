"""One indicator's path is one trace, with the services as real processes exporting OTLP.

The services run as child processes (``Pipeline``) with ``OTEL_TRACES_EXPORTER=otlp`` pointed
at a small OTLP/HTTP sink in this test, which decodes what they export
(``ExportTraceServiceRequest``, the collector's own protocol). For every indicator the
workspace received, on Redis Streams and on Service Bus (the real SDK against the fake AMQP
peer, with the Azure SDK's own spans on), the test follows

    fetch page (fetcher) → filter indicator (filter) → upload indicator (uploader)

by parent span ids within one trace id, and checks the batch spans link the messages. Then it
scans every exported span and every log line for the secrets the pipeline was configured with.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from harness.pipeline import ACCEPT_ALL, Pipeline
from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.sentinel import STIX_ROUTE
from tests.e2e.pipeline_tools import BASE_ENV, log_events
from tests.helpers import wait_for

SERVICE = "service.name"


@dataclass(frozen=True)
class Exported:
    """One span as a collector received it (ids in hex)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str]
    links: list[tuple[str, str]]
    texts: list[str] = field(repr=False)  # every string it holds, for the secret scan


def _value(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return ",".join(_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return ",".join(f"{kv.key}={_value(kv.value)}" for kv in value.kvlist_value.values)
    return "" if kind is None else str(getattr(value, kind))


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, str]:
    return {kv.key: _value(kv.value) for kv in pairs}


class OtlpSink:
    """``POST /v1/traces`` as an OpenTelemetry collector answers it; keeps every span."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = _attributes(span.attributes)
                    texts = [span.name, *attributes.values(), *resource.values()]
                    for event in span.events:
                        texts += [event.name, *_attributes(event.attributes).values()]
                    for link in span.links:
                        texts += _attributes(link.attributes).values()
                    texts.append(span.status.message)
                    self.spans.append(
                        Exported(
                            service=resource.get(SERVICE, ""),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes=attributes,
                            links=[
                                (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                            ],
                            texts=texts,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def named(self, name: str) -> list[Exported]:
        return [span for span in self.spans if span.name == name]


@pytest.fixture
async def sink() -> AsyncIterator[OtlpSink]:
    collector = OtlpSink()
    await collector.start()
    yield collector
    await collector.stop()


def _secrets(pipeline: Pipeline) -> list[str]:
    env = pipeline.env
    secrets = [env["MATI_API_KEY"], env["MATI_API_SECRET"], env["AZURE_CLIENT_SECRET"]]
    shared_key = re.search(r"SharedAccessKey=([^;]+)", env.get("SERVICEBUS_CONNECTION_STRING", ""))
    if shared_key:
        secrets.append(shared_key.group(1))
    assert all(len(secret) >= 8 for secret in secrets), "the scan needs real secrets"
    return secrets


@pytest.mark.timeout(60)
async def test_one_trace_per_indicator_from_page_to_upload(
    tmp_path: Path,
    bus_env: dict[str, str],
    sink: OtlpSink,
) -> None:
    env = {
        **BASE_ENV,
        **ACCEPT_ALL,
        **bus_env,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    system = "servicebus" if bus_env["BUS"] == "servicebus" else "redis_streams"
    async with Pipeline(tmp_path, feed=Feed(seed=8, count=40, days=3), env=env) as pipeline:
        # The first upload request fails once (503) and is retried: its messages show it.
        # (Redis only: on Service Bus against the fake peer, renewing locks during that retry
        # breaks the receiver, a bus problem of its own, reported and not traces' business.)
        retry = system == "redis_streams"
        if retry:
            pipeline.sims.sentinel.faults.inject(FaultKind.SERVER_ERROR, route=STIX_ROUTE)
        await pipeline.start_service("filter")
        await pipeline.start_service("uploader")
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=30)
        uploaded = set(pipeline.sims.sentinel.store)
        assert uploaded, "the feed must yield uploads"

        def accepted_spans() -> set[str]:
            return {
                s.attributes.get("stix.id", "")
                for s in sink.named("upload indicator")
                if s.attributes.get("mati2sentinel.outcome") == "accepted"
            }

        await wait_for(lambda: accepted_spans() >= uploaded, 20, what="upload indicator spans")
        by_id = {span.span_id: span for span in sink.spans}
        requests = sink.named("upload request")

        followed: set[str] = set()
        for upload in sink.named("upload indicator"):
            if upload.attributes.get("stix.id") not in uploaded:
                continue
            followed.add(upload.attributes["stix.id"])
            filtered = by_id[upload.parent_id]
            page = by_id[filtered.parent_id]
            assert (page.name, filtered.name) == ("fetch page", "filter indicator")
            assert [s.service for s in (page, filtered, upload)] == [
                "mati2sentinel-fetcher",
                "mati2sentinel-filter",
                "mati2sentinel-uploader",
            ]
            assert page.trace_id == filtered.trace_id == upload.trace_id
            assert page.parent_id == ""  # one trace per page
            assert upload.attributes["indicator.id"] == filtered.attributes["indicator.id"]
            assert filtered.attributes["messaging.system"] == system
            assert filtered.attributes["messaging.destination.name"] == "indicators"
            assert filtered.attributes["messaging.operation.type"] == "process"
            assert upload.attributes["messaging.destination.name"] == "upload.demo"
            # The request that carried it links the message it batched, and the batch of the
            # filter links the raw message (the page's context).
            carried = (filtered.trace_id, filtered.span_id)
            assert any(carried in r.links for r in requests), upload.attributes["stix.id"]
            assert any((page.trace_id, page.span_id) in b.links for b in sink.named("filter batch"))
        assert followed == uploaded
        outcomes = sorted(r.attributes.get("mati2sentinel.outcome", "") for r in requests)
        assert outcomes == ["UpstreamUnavailable"] * retry + ["ok"] * (len(requests) - retry)
        if retry:
            failed = next(r for r in requests if r.attributes["mati2sentinel.outcome"] != "ok")
            retried = [
                s
                for s in sink.named("upload indicator")
                if (by_id[s.parent_id].trace_id, s.parent_id) in failed.links
            ]
            assert len(retried) == len(failed.links) > 0
            assert all(s.attributes["upload.attempts"] == "2" for s in retried)
            assert all(s.attributes["mati2sentinel.outcome"] == "accepted" for s in retried)

        # Log lines carry the trace of the span they were logged in, and the destination.
        pages = {(p.trace_id, p.span_id) for p in sink.named("fetch page")}
        lines = [e for e in log_events(pipeline, "sync") if e.get("event") == "fetch.page"]
        assert lines
        assert all((e.get("trace_id"), e.get("span_id")) in pages for e in lines)
        assert all(e.get("destination") == "demo" for e in lines)

        if system == "servicebus":
            # The Azure SDK's spans join ours: its message span sits in a page's trace.
            page_traces = {trace_id for trace_id, _ in pages}
            assert any(
                s.name.startswith("ServiceBus.") and s.trace_id in page_traces for s in sink.spans
            )

        # No secret in any span (attribute, event, link, status) or any log line.
        # (The services are stopped first: what they log and export on the way out counts.)
        assert pipeline.processes is not None
        await pipeline.processes.stop_all(grace_s=30)
        secrets = _secrets(pipeline)
        texts = [text for span in sink.spans for text in span.texts]
        logs = [p.read_text(errors="replace") for p in (pipeline.state_dir / "logs").glob("*.log")]
        assert len(logs) == 3
        assert texts
        for secret in secrets:
            assert not [t for t in texts if secret in t], "a span holds a configured secret"
            assert not [log for log in logs if secret in log], "a log line holds a secret"
