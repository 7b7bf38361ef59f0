"""OpenTelemetry tracing, off unless ``Settings.otel.endpoint`` names an OTLP collector.

When on, :func:`configure` gives the process its own tracer provider (an OTLP/HTTP exporter
behind a batch processor) and instruments asyncpg and redis with the maintained
instrumentations. paystream's own spans are made at its seams: one per GraphQL operation (the
gateway), one per message produced (``send <topic>``) and processed (``process <topic>``),
one per subscription update and per webhook attempt. The W3C trace context travels with every
message: in Kafka headers (``traceparent``, ``tracestate``), and in the ``trace`` column of
the outbox and of the webhook schedule while a message waits there, so one trace follows a
payment from createPayment through the worker's posting to its subscribers and webhooks.

When off, nothing is set up: no provider, no instrumentation, no span, no header added. A
context that arrives with a message is passed on unchanged, so one role running without
tracing does not cut the traces of the others. A database or Redis call made outside any
span (a relay's sweep, a poll loop) is not recorded: it would start a trace of one span
every time it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes, AttributeValue

from .config import Settings

log = logging.getLogger("paystream.tracing")

Carrier = dict[str, str]
"""A trace context in its W3C text form: ``{"traceparent": ..., "tracestate": ...}``."""

Headers = list[tuple[str, bytes]]

K = TypeVar("K")

# Only the W3C trace context crosses process boundaries (whatever OTEL_PROPAGATORS says):
# messages are paystream's own, and baggage would carry whatever a caller put in it.
_W3C = TraceContextTextMapPropagator()
_FIELDS = frozenset(_W3C.fields)


class PaystreamSampler(Sampler):
    """``ratio`` of the traces started here, a received trace as its start decided; and never
    a database or Redis call (a client span) that has no parent: those are the sweeps and
    polls of background loops, one trace of one span each time they run."""

    def __init__(self, ratio: float) -> None:
        self._ratio = ratio
        self._inner = ParentBased(TraceIdRatioBased(ratio))

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None,
                      trace_state: TraceState | None = None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes,
                                         links, trace_state)

    def get_description(self) -> str:
        return f"PaystreamSampler{{ParentBased{{TraceIdRatioBased{{{self._ratio}}}}}}}"


@dataclass(frozen=True)
class _Tracing:
    provider: TracerProvider
    tracer: Tracer
    shutdown: Callable[[], None]


_active: _Tracing | None = None


def configure(settings: Settings, role: str, *, exporter: SpanExporter | None = None) -> bool:
    """Set tracing up for this process if ``settings.otel.endpoint`` is set (or an
    ``exporter`` is given: the tests' in-memory one, exporting each span as it ends);
    returns whether tracing is on. Call it once at start-up, before the app or the worker is
    built; a second call changes nothing."""
    global _active
    otel = settings.otel
    if _active is not None:
        return True
    if exporter is None and not otel.endpoint:
        return False
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    processor: SpanProcessor
    if exporter is None:
        # Imported only here: it brings requests and protobuf, which an untraced process
        # does not need.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=otel.endpoint.rstrip("/") + "/v1/traces"))
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(
        resource=Resource.create({"service.name": otel.service_name or f"paystream-{role}"}),
        sampler=PaystreamSampler(otel.sample_ratio),
    )
    provider.add_span_processor(processor)
    # Class-level instrumentation: every connection and client made from now on (and the
    # pooled ones) is traced. Statement parameters and Redis arguments are not recorded.
    asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]  # its __init__ is unannotated upstream
    redis = RedisInstrumentor()
    asyncpg.instrument(tracer_provider=provider)
    redis.instrument(tracer_provider=provider)

    def shutdown() -> None:
        asyncpg.uninstrument()
        redis.uninstrument()
        provider.shutdown()

    _active = _Tracing(provider, provider.get_tracer("paystream"), shutdown)
    log.info("tracing to %s as %s", otel.endpoint or type(exporter).__name__,
             otel.service_name or f"paystream-{role}")
    return True


def shutdown() -> None:
    """Export what is left and undo :func:`configure` (at process exit; tests between runs)."""
    global _active
    if _active is not None:
        active, _active = _active, None
        active.shutdown()


def enabled() -> bool:
    return _active is not None


def current_carrier() -> Carrier | None:
    """The current span's context, to store with a message written now (None when tracing is
    off or no span is current)."""
    if _active is None:
        return None
    carrier: Carrier = {}
    _W3C.inject(carrier)
    return carrier or None


def carrier_of(span: Span | None, default: Carrier | None = None) -> Carrier | None:
    """``span``'s context as a carrier; ``default`` when there is no span (tracing off)."""
    if span is None:
        return default
    carrier: Carrier = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier or None


def carrier_of_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> Carrier | None:
    """The trace context a Kafka record carries, if any."""
    found = {name: value.decode("latin-1") for name, value in headers or ()
             if name in _FIELDS and value is not None}
    return found or None


def headers_of(carrier: Carrier | None) -> Headers | None:
    """Kafka headers carrying ``carrier`` (None: none at all, as before tracing existed)."""
    return [(name, value.encode("latin-1")) for name, value in carrier.items()] if carrier else None


def _parent(carrier: Carrier | None) -> Context | None:
    """The context to start a span in: the carrier's, else the current one."""
    return _W3C.extract(carrier) if carrier else None


def _messaging(topic: str, operation: str) -> dict[str, AttributeValue]:
    return {"messaging.system": "kafka", "messaging.destination.name": topic,
            "messaging.operation.type": operation}


@contextmanager
def span(name: str, *, parent: Carrier | None = None, kind: SpanKind = SpanKind.INTERNAL,
         attributes: Attributes = None) -> Iterator[Span | None]:
    """A span, current inside the block: the child of ``parent`` (a stored or received
    context) when given, else of the current span. Yields None when tracing is off."""
    if _active is None:
        yield None
        return
    with _active.tracer.start_as_current_span(name, context=_parent(parent), kind=kind,
                                              attributes=attributes) as current:
        yield current


@contextmanager
def sending(topic: str, parent: Carrier | None, attributes: Attributes = None
            ) -> Iterator[Headers | None]:
    """A producer span ``send <topic>`` around one ``send``, the child of ``parent`` (the
    context stored with the message); yields the headers that carry it to the consumers.
    Tracing off: the headers carry ``parent`` unchanged (None when there is none)."""
    if _active is None:
        yield headers_of(parent)
        return
    with span(f"send {topic}", parent=parent, kind=SpanKind.PRODUCER,
              attributes={**_messaging(topic, "send"), **(attributes or {})}) as current:
        yield headers_of(carrier_of(current))


@contextmanager
def processing(topic: str, parent: Carrier | None, attributes: Attributes = None
               ) -> Iterator[Carrier | None]:
    """A consumer span ``process <topic>`` for one message, the child of the context it
    carried (``parent``) and current inside the block; yields the span's context, for what
    the processing hands on. Tracing off: yields ``parent`` itself."""
    if _active is None:
        yield parent
        return
    with span(f"process {topic}", parent=parent, kind=SpanKind.CONSUMER,
              attributes={**_messaging(topic, "process"), **(attributes or {})}) as current:
        yield carrier_of(current)


@contextmanager
def processing_batch(topic: str, parents: Mapping[K, Carrier | None], *, batch: str,
               attributes: Callable[[K], Attributes] | None = None
               ) -> Iterator[dict[K, Carrier | None]]:
    """Processing a batch of messages: a consumer span ``process <topic>`` per message (per
    key of ``parents``), each the child of the context its message carried, and a span
    ``batch`` current inside the block, the child of the first of them and linked to the
    others (the batch's database work shows in the first message's trace; the links lead to
    it from the rest). Yields each key's span context, to store with or send on what the
    processing writes. Tracing off: yields ``parents``."""
    if _active is None or not parents:
        yield dict(parents)
        return
    tracer = _active.tracer
    spans = {
        key: tracer.start_span(
            f"process {topic}", context=_parent(parent), kind=SpanKind.CONSUMER,
            attributes={**_messaging(topic, "process"),
                        **((attributes(key) or {}) if attributes else {})})
        for key, parent in parents.items()
    }
    first, *rest = spans.values()
    try:
        with tracer.start_as_current_span(
                batch, context=trace.set_span_in_context(first),
                links=[Link(s.get_span_context()) for s in rest],
                attributes={"messaging.batch.message_count": len(spans)}):
            yield {key: carrier_of(s) for key, s in spans.items()}
    except Exception as exc:
        for failed in spans.values():
            failed.record_exception(exc)
            failed.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        for ended in spans.values():
            ended.end()


__all__ = [
    "Carrier",
    "Headers",
    "PaystreamSampler",
    "carrier_of",
    "carrier_of_headers",
    "configure",
    "current_carrier",
    "enabled",
    "headers_of",
    "processing",
    "processing_batch",
    "sending",
    "shutdown",
    "span",
]
