"""Tracing is off unless an OTLP endpoint is configured, and then nothing is set up; on (with
the SDK's in-memory exporter) its helpers carry the W3C context the way the seams use them.
No servers."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from entity_samples import NOWHERE, sample_accounts
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from paystream import tracing
from paystream.config import Settings
from paystream.events.messages import PaymentStatusEvent
from paystream.logging import JsonFormatter

PARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "PAYSTREAM_OTEL__ENDPOINT",
                 "PAYSTREAM_OTEL__SERVICE_NAME", "PAYSTREAM_OTEL__SAMPLE_RATIO"):
        monkeypatch.delenv(name, raising=False)
    yield
    tracing.shutdown()


def settings(**otel: object) -> Settings:
    return Settings(**NOWHERE, otel=otel)  # type: ignore[arg-type]


def logged() -> dict[str, object]:
    record = logging.LogRecord("paystream.test", logging.INFO, __file__, 1, "hello", None, None)
    return dict(json.loads(JsonFormatter().format(record)))


def test_without_an_endpoint_nothing_is_set_up() -> None:
    plain = settings()
    assert plain.otel.endpoint == ""
    assert tracing.configure(plain, "api") is False
    assert not tracing.enabled()
    assert not AsyncPGInstrumentor().is_instrumented_by_opentelemetry  # type: ignore[no-untyped-call]
    assert not RedisInstrumentor().is_instrumented_by_opentelemetry
    # No span, no context to store, no header added, nothing in the log lines.
    with tracing.span("graphql", kind=SpanKind.SERVER) as span:
        assert span is None
        assert tracing.current_carrier() is None
        assert not trace.get_current_span().get_span_context().is_valid
        assert "trace_id" not in logged()
    with tracing.sending("payments.requested", None) as headers:
        assert headers is None
    # A context that came with a message is passed on unchanged.
    with tracing.sending("payments.status", PARENT) as headers:
        assert headers == [("traceparent", PARENT["traceparent"].encode())]
    with tracing.processing("payments.status", PARENT) as carried:
        assert carried is PARENT
    key = uuid.uuid4()
    with tracing.processing_batch("payments.requested", {key: PARENT}, batch="post batch"
                                  ) as traces:
        assert traces == {key: PARENT}


def test_the_standard_variable_is_the_fallback_and_ours_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "payments-eu")
    assert settings().otel.endpoint == "http://collector:4318"
    assert settings().otel.service_name == "payments-eu"
    monkeypatch.setenv("PAYSTREAM_OTEL__ENDPOINT", "http://otel-collector:4318")
    assert settings().otel.endpoint == "http://otel-collector:4318"
    # Set to nothing: off, whatever the standard variable says.
    monkeypatch.setenv("PAYSTREAM_OTEL__ENDPOINT", "")
    assert settings().otel.endpoint == ""
    with pytest.raises(ValidationError, match="not an http"):
        settings(endpoint="otel-collector:4318")
    with pytest.raises(ValidationError):
        settings(sample_ratio=1.5)


def test_on_spans_go_to_the_endpoint_over_otlp_http_and_off_undoes_it() -> None:
    """A receiver on loopback standing in for the collector: the spans arrive as OTLP
    protobuf at <endpoint>/v1/traces when the process flushes them (here, at shutdown)."""
    received: list[tuple[str, str, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], len(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/"
        assert tracing.configure(settings(endpoint=endpoint), "worker")
        assert tracing.enabled()
        assert AsyncPGInstrumentor().is_instrumented_by_opentelemetry  # type: ignore[no-untyped-call]
        assert RedisInstrumentor().is_instrumented_by_opentelemetry
        with tracing.span("post batch"):
            pass
        tracing.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    assert [(path, kind) for path, kind, _ in received] == [
        ("/v1/traces", "application/x-protobuf")]
    assert not tracing.enabled()
    assert not AsyncPGInstrumentor().is_instrumented_by_opentelemetry  # type: ignore[no-untyped-call]
    assert not RedisInstrumentor().is_instrumented_by_opentelemetry


def test_on_the_context_goes_from_span_to_headers_to_the_next_span() -> None:
    spans = InMemorySpanExporter()
    assert tracing.configure(settings(), "test", exporter=spans)
    with tracing.span("mutation createPayment", kind=SpanKind.SERVER) as operation:
        assert operation is not None
        stored = tracing.current_carrier()
        assert "trace_id" in logged()
    assert stored is not None
    with tracing.sending("payments.requested", stored) as headers:
        pass
    received = tracing.carrier_of_headers(headers)
    first, second = uuid.uuid4(), uuid.uuid4()
    with tracing.processing_batch("payments.requested", {first: received, second: None},
                                  batch="post batch",
                                  attributes=lambda key: {"paystream.payment_id": str(key)}
                                  ) as traces:
        line = logged()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    op, send = by_name["mutation createPayment"], by_name["send payments.requested"]
    processed = [s for s in spans.get_finished_spans() if s.name == "process payments.requested"]
    batch = by_name["post batch"]
    assert send.parent is not None and send.parent.span_id == op.context.span_id
    assert send.kind is SpanKind.PRODUCER
    mine = next(s for s in processed if s.attributes["paystream.payment_id"] == str(first))
    other = next(s for s in processed if s.attributes["paystream.payment_id"] == str(second))
    assert mine.parent is not None and mine.parent.span_id == send.context.span_id
    assert mine.context.trace_id == op.context.trace_id
    assert other.parent is None and other.context.trace_id != op.context.trace_id
    # The batch's work is in the first message's trace and linked from the other's.
    assert batch.parent is not None and batch.parent.span_id == mine.context.span_id
    assert [link.context.span_id for link in batch.links] == [other.context.span_id]
    assert line["trace_id"] == format(op.context.trace_id, "032x")
    assert traces[first] == tracing.carrier_of(_as_span(mine))


def test_database_and_redis_calls_outside_any_span_are_not_recorded() -> None:
    spans = InMemorySpanExporter()
    assert tracing.configure(settings(), "test", exporter=spans)
    assert tracing.enabled() and tracing._active is not None
    tracer = tracing._active.tracer
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT):
        pass
    with tracing.span("graphql", kind=SpanKind.SERVER), \
            tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT):
        pass
    assert sorted(s.name for s in spans.get_finished_spans()) == ["SELECT", "graphql"]


def test_the_trace_is_not_part_of_the_event_json() -> None:
    from datetime import UTC, datetime

    from paystream.domain.entities import PaymentRow

    at = datetime(2026, 1, 1, tzinfo=UTC)
    payment = PaymentRow(id=uuid.uuid4(), partner_id=uuid.uuid4(), idempotency_key="k",
                         request_hash="h", source_account_id=uuid.uuid4(),
                         destination_account_id=uuid.uuid4(), amount_minor=100, currency="USD",
                         reference=None, status="SUCCEEDED", failure_reason=None, version=2,
                         created_at=at, updated_at=at)
    event = PaymentStatusEvent.of(payment, *sample_accounts(payment))
    data = json.loads(event.encode())
    data["trace"] = PARENT
    # A "trace" key in the JSON is not the message's context.
    assert PaymentStatusEvent.decode(json.dumps(data)).trace is None
    traced = replace(event, trace=PARENT)
    assert "trace" not in json.loads(traced.encode())
    assert PaymentStatusEvent.decode(traced.encode()) == event


def _as_span(readable: object) -> trace.Span:
    """A finished span's context as a (non-recording) span, to compare carriers."""
    return trace.NonRecordingSpan(readable.context)  # type: ignore[attr-defined]
