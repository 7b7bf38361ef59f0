"""Tracing end to end (issue 18): one createPayment through the real servers is one trace,
from the API's operation through the broker to the worker's posting, the status event it
publishes, the API's status stream, the subscriber's update and the webhook delivery.

The roles run in this process (the API behind uvicorn, a worker, a webhook sender) so that the
SDK's in-memory exporter sees every span; they share no context but what the messages carry
(Kafka headers, the outbox's ``trace`` column): each role's tasks start outside any span.
Each test has its own topics and consumer groups, so no other process posts or consumes its
messages."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text

from paystream import tracing
from paystream.client import PaystreamClient
from paystream.config import Settings
from paystream.events.kafka import ensure_topics, make_producer
from paystream.webhooks.sender import run_sender
from paystream.worker.main import PaymentWorker
from paystream.worker.outbox import OutboxRelay

from ._gateway import app_client, changed, served
from ._receiver import Receiver

pytestmark = pytest.mark.integration

ACCOUNT_ACTIVITY = "subscription($id: ID!) { accountActivity(accountId: $id) { id status } }"
CREATE_ENDPOINT = """
mutation($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $input) { secret } }
"""
CREATE = "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"


class Spans(InMemorySpanExporter):
    """The SDK's in-memory exporter, awaitable: spans are exported as each one ends."""

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self._loop.call_soon_threadsafe(self._changed.set)
        return result

    async def wait_for(self, predicate: Callable[[tuple[ReadableSpan, ...]], bool],
                       timeout: float = 30.0) -> tuple[ReadableSpan, ...]:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                spans = self.get_finished_spans()
                if predicate(spans):
                    return spans
                await self._changed.wait()


def isolated(settings: Settings, **sections: Any) -> Settings:
    """``settings`` with topics and consumer groups of their own."""
    suffix = uuid.uuid4().hex[:8]
    kafka = {"requested_topic": f"trace.requested.{suffix}",
             "status_topic": f"trace.status.{suffix}", "dlq_topic": f"trace.dlq.{suffix}",
             "worker_group": f"trace-worker-{suffix}"}
    webhooks = {"group": f"trace-webhooks-{suffix}", "poll_interval_s": 0.05}
    return changed(settings, kafka={**kafka, **sections.pop("kafka", {})},
                   webhooks={**webhooks, **sections.pop("webhooks", {})}, **sections)


@pytest.fixture
async def spans() -> AsyncIterator[Spans]:
    exporter = Spans()
    yield exporter
    tracing.shutdown()


@asynccontextmanager
async def running(role: Awaitable[None]) -> AsyncIterator[None]:
    """A role (the worker, a webhook sender) as a task of this process, started outside any
    span, cancelled at the end."""
    task = asyncio.ensure_future(role)
    try:
        yield
    finally:
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results


def named(spans: Sequence[ReadableSpan], name: str, **attributes: object) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name
            and all((s.attributes or {}).get(k) == v for k, v in attributes.items())]


def one(spans: Sequence[ReadableSpan], name: str, **attributes: object) -> ReadableSpan:
    found = named(spans, name, **attributes)
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


def one_update(spans: Sequence[ReadableSpan], status: str) -> ReadableSpan:
    """The one span that made the subscriber's update of the payment in ``status``."""
    found = [s for s in spans if s.name in ("subscription update", "accountActivity update")
             and (s.attributes or {}).get("paystream.payment.status") == status]
    assert len(found) == 1, [(s.name, s.attributes) for s in found]
    return found[0]


def ancestry(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[str]:
    """The names from ``span`` up to its trace's root; every parent must be among ``spans``."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    names = [span.name]
    while span.parent is not None:
        assert span.parent.span_id in by_id, f"{span.name}: its parent was not exported"
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def payment_input(source: str, destination: str, amount: str) -> dict[str, object]:
    return {"input": {"idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
                      "destinationAccountId": destination, "amount": amount,
                      "currency": "USD"}}


async def test_one_create_payment_is_one_trace_from_the_api_to_its_subscriber_and_webhook(
        migrated: Settings, make_partner: Any, spans: Spans) -> None:
    settings = isolated(migrated)
    requested, status = settings.kafka.requested_topic, settings.kafka.status_topic
    await ensure_topics(settings.kafka)
    assert tracing.configure(settings, "test", exporter=spans)
    receiver = Receiver()
    await receiver.start()
    payer, payee = await make_partner(), await make_partner()
    source = await payer.account(balance="50.00")
    destination = await payee.account(balance="0")
    try:
        async with served(settings) as url, running(PaymentWorker(settings).run()), \
                running(run_sender(settings)), PaystreamClient(url, payer.key) as api, \
                api.subscriptions() as ws:
            await api.execute(CREATE_ENDPOINT, {"input": {"url": receiver.url("traced")}})
            stream = ws.results(await ws.start(ACCOUNT_ACTIVITY, {"id": source}))
            # The subscription is live once it shows a payment: a probe, sent again until one
            # is seen (the server registers the subscription a moment after its start).
            probes: dict[str, str] = {}
            while not probes or not any(s != "-" for s in probes.values()):
                assert len(probes) < 5, "the subscription never delivered an update"
                probe = await api.create_payment(
                    idempotency_key=uuid.uuid4().hex, source_account_id=source,
                    destination_account_id=destination, amount="1.00", currency="USD")
                probes[probe["id"]] = "-"
                with suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        shown = (await anext(stream))["accountActivity"]
                        probes[shown["id"]] = shown["status"]
            # Every probe posted first, so that the traced payment is a worker batch of its
            # own (a batch's database work is traced under its first request).
            async with asyncio.timeout(30):
                while any(s != "SUCCEEDED" for s in probes.values()):
                    shown = (await anext(stream))["accountActivity"]
                    probes[shown["id"]] = shown["status"]
            # On a new connection: the wait above can outlast uvicorn's keep-alive (5 s), and
            # a request sent as the server closes an idle connection fails to be read.
            async with PaystreamClient(url, payer.key) as fresh:
                created = (await fresh.execute(CREATE, payment_input(
                    source, destination, "12.50")))["createPayment"]
            async with asyncio.timeout(30):
                while (await anext(stream))["accountActivity"] != {
                        "id": created["id"], "status": "SUCCEEDED"}:
                    pass
            await stream.aclose()
            await receiver.wait_for(lambda requests: any(
                r.json["type"] == "payment.succeeded" and r.json["data"]["id"] == created["id"]
                for r in requests))
            payment_id = created["id"]

            def complete(finished: tuple[ReadableSpan, ...]) -> bool:
                # The attempt's span ends once the attempt is recorded, after the receiver
                # answered; the worker's, once its status event is sent.
                return bool(named(finished, "webhook attempt",
                                  **{"paystream.webhook.type": "payment.succeeded",
                                     "paystream.payment_id": payment_id})
                            and named(finished, f"process {requested}",
                                      **{"paystream.payment_id": payment_id}))

            finished = await spans.wait_for(complete)
    finally:
        await receiver.stop()

    posting = one(finished, f"process {requested}", **{"paystream.payment_id": payment_id})
    trace_id = posting.context.trace_id
    traced = [s for s in finished if s.context.trace_id == trace_id]
    # The root is the API's operation; the worker's posting continues it through the broker.
    operation = one(traced, "mutation createPayment")
    assert operation.parent is None and operation.kind is SpanKind.SERVER
    assert operation.resource.attributes["service.name"] == "paystream-test"
    accepted = [f"process {requested}", f"send {requested}", "mutation createPayment"]
    assert ancestry(posting, traced) == accepted
    assert posting.kind is SpanKind.CONSUMER
    assert ancestry(one(traced, "post batch"), traced) == ["post batch", *accepted]

    # Their database and Redis work is in the trace.
    def calls(library: str, under: str) -> list[ReadableSpan]:
        return [s for s in traced if s.kind is SpanKind.CLIENT and s.instrumentation_scope
                and s.instrumentation_scope.name == f"opentelemetry.instrumentation.{library}"
                and under in ancestry(s, traced)]

    assert calls("asyncpg", "mutation createPayment") and calls("asyncpg", "post batch")
    assert calls("redis", "mutation createPayment")
    # The status the worker posted is published in the trace, reaches the API's status stream
    # and the subscriber's update, and the webhook sender, whose attempt delivered it.
    published = one(traced, f"send {status}", **{"paystream.payment.status": "SUCCEEDED"})
    assert ancestry(published, traced) == [f"send {status}", *accepted]
    # The update is built once for every subscriber written to directly ("subscription
    # update", made by the status stream), or by a subscriber's own stream otherwise.
    update = one_update(traced, "SUCCEEDED")
    assert ancestry(update, traced) == [update.name, f"process {status}", f"send {status}",
                                        *accepted]
    attempt = one(traced, "webhook attempt", **{"paystream.webhook.type": "payment.succeeded"})
    assert attempt.kind is SpanKind.CLIENT
    assert (attempt.attributes or {})["http.response.status_code"] == 200
    assert ancestry(attempt, traced) == ["webhook attempt", f"process {status}",
                                         f"send {status}", *accepted]
    # The API's own PENDING event is in the trace too, straight from the operation.
    pending = one_update(traced, "PENDING")
    assert ancestry(pending, traced) == [pending.name, f"process {status}", f"send {status}",
                                         "mutation createPayment"]
    # The probes are traces of their own.
    assert not [s for s in traced if (s.attributes or {}).get("paystream.payment_id") in probes]


async def test_the_trace_survives_the_wait_in_the_request_outbox(
        migrated: Settings, make_partner: Any, spans: Spans, services: Any) -> None:
    """An API that cannot reach the broker: the request waits in the outbox with the
    operation's context, and the outbox relay sends it on with it."""
    settings = isolated(migrated, outbox={"relay_min_age_s": 0.0, "relay_interval_s": 0.05})
    await ensure_topics(settings.kafka)
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    assert tracing.configure(settings, "test", exporter=spans)
    partner = await make_partner()
    source, destination = await partner.account(balance="10.00"), await partner.account()
    async with app_client(settings, kafka={"bootstrap_servers": f"127.0.0.1:{dead_port}"}
                          ) as (http, _):
        answer = await http.post("/graphql", headers={"Authorization": f"Bearer {partner.key}"},
                                 json={"query": CREATE, "variables": payment_input(
                                     source, destination, "4.00")})
        payment_id = answer.json()["data"]["createPayment"]["id"]
        operation = one(spans.get_finished_spans(), "mutation createPayment")
        async with services.db.primary.connect() as conn:
            stored = (await conn.execute(text(
                "SELECT trace->>'traceparent' FROM outbox"
                " WHERE topic = :t AND payload->>'payment_id' = :p"),
                {"t": settings.kafka.requested_topic, "p": payment_id})).scalar_one()
        assert stored.split("-")[1] == format(operation.context.trace_id, "032x")
        # Relay it from this process now: the session's shared worker also relays every
        # topic's rows once they are relay_min_age_s old, out of this exporter's sight.
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            relay = OutboxRelay(services.db, producer, topic=settings.kafka.status_topic,
                                requested_topic=settings.kafka.requested_topic,
                                settings=settings.outbox)
            assert await relay.sweep_once(min_age_s=0.0) >= 1
        finally:
            await producer.stop()
        async with running(PaymentWorker(settings).run()):
            finished = await spans.wait_for(lambda found: bool(named(
                found, f"process {settings.kafka.requested_topic}",
                **{"paystream.payment_id": payment_id})))
    posting = one(finished, f"process {settings.kafka.requested_topic}",
                  **{"paystream.payment_id": payment_id})
    assert posting.context.trace_id == operation.context.trace_id
    relayed = one(finished, f"send {settings.kafka.requested_topic}")
    assert "paystream.outbox_id" in (relayed.attributes or {})  # sent by the relay
    assert ancestry(posting, finished) == [posting.name, relayed.name, operation.name]
