"""The relay publishes what a posting committed and nobody produced: one outbox row per
posting names the batch's status events in the feed (migration 0011), and the relay sends
each, keyed by its payment, with its cursor and its own trace context. On topics of the
test's own: no worker reads them, so the posting here is the only one."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from paystream.domain.feed import encode_event_cursor
from paystream.events.kafka import make_consumer, make_producer, start_with_retry
from paystream.events.messages import PaymentRequested, PaymentStatusEvent, decode_requested
from paystream.services.app import Services
from paystream.worker.outbox import OutboxRelay
from paystream.worker.posting import post_batch

from .conftest import outbox_sent, own_topics, pay, until

pytestmark = pytest.mark.integration

TRACEPARENT = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


async def _requests(services: Any, topic: str, ids: list[str]) -> list[PaymentRequested]:
    async with services.db.primary.connect() as conn:
        payloads = (await conn.execute(text(
            "SELECT payload::text FROM outbox WHERE topic = :t AND payload->>'payment_id' = ANY(:p)"
            " ORDER BY id"), {"t": topic, "p": ids})).scalars().all()
    requests = [decode_requested(p.encode()) for p in payloads]
    assert all(isinstance(r, PaymentRequested) for r in requests)
    return requests  # type: ignore[return-value]


async def test_a_postings_events_are_stored_once_and_relayed_from_the_feed(
        migrated, services, make_partner) -> None:
    settings = await own_topics(migrated, "relay")
    api = Services.create(settings)
    await api.start()
    try:
        partner = await make_partner()
        source, destination = await partner.account(balance="10.00"), await partner.account()
        ids = [await pay(api, partner, source, destination) for _ in range(2)]
    finally:
        await api.close()
    traced, untraced = ids
    status_topic = settings.kafka.status_topic
    async with services.db.write_session() as session:
        result = await post_batch(
            session, await _requests(services, settings.kafka.requested_topic, ids),
            status_topic=status_topic,
            traces={uuid.UUID(traced): {"traceparent": TRACEPARENT}})
    # One outbox row for the posting, naming the two feed rows; no copy of the events.
    assert len(result.outbox_ids) == 1
    async with services.db.primary.connect() as conn:
        payload, named = (await conn.execute(text(
            "SELECT payload, event_ids FROM outbox WHERE id = :id"),
            {"id": result.outbox_ids[0]})).one()
        feed = {str(r[0]): encode_event_cursor(int(r[1]), int(r[2])) for r in await conn.execute(
            text("SELECT payment_id, CAST(txid AS text), id FROM events WHERE id = ANY(:ids)"),
            {"ids": named})}
    assert payload is None and sorted(feed) == sorted(ids)
    assert not await outbox_sent(services, status_topic, traced)

    # Nobody produced them (no pipeline here): the relay's sweep does, from the feed.
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        relay = OutboxRelay(services.db, producer, topic=status_topic,
                            requested_topic=settings.kafka.requested_topic,
                            settings=settings.outbox)

        async def swept() -> bool:  # other tests' unsent rows may come first in id order
            await relay.sweep_once(min_age_s=0)
            return await outbox_sent(services, status_topic, traced)
        await until(swept, "the relay never published the posting's row")
    finally:
        await producer.stop()

    # From the start of the test's own topic: only the relay wrote to it.
    consumer = make_consumer(settings.kafka, status_topic, group_id=None)
    await start_with_retry(consumer)
    received: dict[str, Any] = {}
    try:
        async with asyncio.timeout(20):
            while len(received) < 2:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    received.update((r.key.decode(), r) for r in records)
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(ids)
    for payment_id, record in received.items():
        event = PaymentStatusEvent.decode(record.value)
        assert (str(event.payment_id), event.status) == (payment_id, "SUCCEEDED")
        assert event.cursor == feed[payment_id], "published without its feed cursor"
    headers = {p: dict(r.headers or ()) for p, r in received.items()}
    assert headers[traced].get("traceparent") == TRACEPARENT.encode()
    assert "traceparent" not in headers[untraced]
