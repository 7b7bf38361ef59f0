"""The API's publisher marks its outbox rows sent one step behind (``services.publisher``):
a produced row is marked by the next acceptance's transaction, by the publisher itself when
none comes within ``api.publisher_mark_after_ms``, and at shutdown. On topics of the test's
own, with no worker reading them until the end and a relay that only takes rows an hour old,
so whatever marks a row sent here is the API. Each test's payments are posted at its end by
a worker of its own (a PENDING payment must have its request queued on the shared topic,
which ``ledger verify`` in later tests checks)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import text

from paystream.config import Settings
from paystream.db import outbox
from paystream.db.outbox import Marks
from paystream.services.app import Services
from paystream.worker.main import PaymentWorker

from .conftest import outbox_sent, own_topics, pay, until

pytestmark = pytest.mark.integration


@asynccontextmanager
async def isolated(migrated: Settings, *, mark_after_ms: int) -> AsyncIterator[
        tuple[Settings, Services]]:
    settings = await own_topics(migrated, "marks",
                                api={"publisher_mark_after_ms": mark_after_ms})
    api = Services.create(settings)
    await api.start()
    try:
        yield settings, api
    finally:
        await api.close()


async def _sent(services: Any, settings: Settings, payment_id: str) -> bool:
    """Whether the payment's payments.requested row is marked sent."""
    return await outbox_sent(services, settings.kafka.requested_topic, payment_id)


async def _posted(services: Any, settings: Settings, ids: list[str]) -> None:
    """Run a worker on the test's topics until none of ``ids`` is PENDING."""
    task = asyncio.ensure_future(PaymentWorker(settings).run())

    async def none_pending() -> bool:
        async with services.db.primary.connect() as conn:
            return not (await conn.execute(text(
                "SELECT count(*) FROM payments WHERE id = ANY(CAST(:ids AS uuid[]))"
                " AND status = 'PENDING'"), {"ids": [uuid.UUID(i) for i in ids]})).scalar_one()
    try:
        await until(none_pending, "the test's payments were never posted", timeout=60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_next_acceptance_marks_the_rows_produced_before_it(
        migrated, services, make_partner) -> None:
    # The publisher never marks on its own here (ten minutes idle): only an acceptance, or
    # the API's shutdown, can.
    async with isolated(migrated, mark_after_ms=600_000) as (settings, api):
        partner = await make_partner()
        source, destination = await partner.account(balance="10.00"), await partner.account()
        first = await pay(api, partner, source, destination)

        async def produced() -> bool:  # its request and its PENDING event acknowledged
            return api.publisher.published >= 2
        await until(produced, "the first payment was never produced")
        assert not await _sent(services, settings, first), "marked in a commit of its own"
        assert api.publisher.busy, "a produced row waiting for its mark is work in hand"

        second = await pay(api, partner, source, destination)
        assert await _sent(services, settings, first), "the next acceptance did not mark it"
        assert not await _sent(services, settings, second)
    # Closing the API marks what it produced.
    assert await _sent(services, settings, second)
    await _posted(services, settings, [first, second])


async def test_the_publisher_marks_on_its_own_when_no_acceptance_comes(
        migrated, services, make_partner) -> None:
    async with isolated(migrated, mark_after_ms=20) as (settings, api):
        partner = await make_partner()
        source, destination = await partner.account(balance="10.00"), await partner.account()
        payment = await pay(api, partner, source, destination)
        await until(lambda: _sent(services, settings, payment),
                    "no acceptance came and the publisher never marked the row")

        async def idle() -> bool:
            return not api.publisher.busy
        await until(idle, "the publisher stayed busy with nothing to do")
    await _posted(services, settings, [payment])


async def test_marks_riding_a_transaction_that_fails_are_kept_for_the_next(services) -> None:
    topic = f"marks.kept.{uuid.uuid4().hex[:8]}"
    async with services.db.write_session() as session:
        row = await outbox.add(session, topic, "k", '{"payment_id": "kept"}')
    marks = Marks()
    marks.add([row])
    with pytest.raises(RuntimeError):
        async with marks.riding(services.db):
            raise RuntimeError("the transaction's own work failed")
    assert marks, "the rows of a rolled-back transaction were dropped"
    assert not await outbox_sent(services, topic, "kept")
    await marks.mark_own(services.db)
    assert not marks
    assert await outbox_sent(services, topic, "kept")


async def test_a_bulk_requests_messages_go_out_without_waiting_for_one_another(
        migrated: Settings) -> None:
    """A bulk request of 1,000 payments from one source account hands the producer 1,000
    requests keyed by that account (one partition) and 1,000 events keyed by payment: every
    send is taken into a batch before any is acknowledged. With aiokafka's 16 KiB batches a
    send waited for its partition's full batch to go out, round trip after round trip, and the
    API's publisher fell behind a bulk load (kafka.producer_batch_bytes)."""
    from paystream.events import make_producer

    settings = await own_topics(migrated, "batching")
    kafka = settings.kafka
    producer = make_producer(kafka, linger_ms=1)
    await producer.start()
    try:
        source = str(uuid.uuid4()).encode()
        futures = [await producer.send(kafka.requested_topic, b"r" * 850, key=source)
                   for _ in range(1000)]
        futures += [await producer.send(kafka.status_topic, b"e" * 950,
                                        key=str(uuid.uuid4()).encode()) for _ in range(1000)]
        acknowledged_meanwhile = sum(f.done() for f in futures)
        offsets = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert acknowledged_meanwhile == 0
    assert len(offsets) == 2000
