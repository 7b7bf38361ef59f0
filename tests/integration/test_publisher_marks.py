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
from paystream.events.kafka import ensure_topics
from paystream.services.app import Services
from paystream.services.payments import CreatePayment
from paystream.worker.main import PaymentWorker

pytestmark = pytest.mark.integration


@asynccontextmanager
async def isolated(migrated: Settings, *, mark_after_ms: int) -> AsyncIterator[
        tuple[Settings, Services]]:
    suffix = uuid.uuid4().hex[:8]
    settings = migrated.model_copy(update={
        "kafka": migrated.kafka.model_copy(update={
            "requested_topic": f"marks.requested.{suffix}",
            "status_topic": f"marks.status.{suffix}", "dlq_topic": f"marks.dlq.{suffix}",
            "worker_group": f"marks-{suffix}"}),
        "api": migrated.api.model_copy(update={"publisher_mark_after_ms": mark_after_ms}),
        "outbox": migrated.outbox.model_copy(update={"relay_min_age_s": 3600})})
    await ensure_topics(settings.kafka)
    api = Services.create(settings)
    await api.start()
    try:
        yield settings, api
    finally:
        await api.close()


async def _pay(api: Services, partner: Any, source: str, destination: str) -> str:
    caller = await api.auth.caller_for(f"Bearer {partner.key}")
    row = await api.payments.create(caller, CreatePayment(
        idempotency_key=uuid.uuid4().hex, source_account_id=source,
        destination_account_id=destination, amount="1.00", currency="USD"))
    return str(row.id)


async def _sent(services: Any, settings: Settings, payment_id: str) -> bool:
    """Whether the payment's payments.requested row is marked sent."""
    async with services.db.primary.connect() as conn:
        return bool((await conn.execute(text(
            "SELECT sent_at IS NOT NULL FROM outbox WHERE topic = :t"
            " AND payload->>'payment_id' = :p"),
            {"t": settings.kafka.requested_topic, "p": payment_id})).scalar_one())


async def _posted(services: Any, settings: Settings, ids: list[str]) -> None:
    """Run a worker on the test's topics until none of ``ids`` is PENDING."""
    task = asyncio.ensure_future(PaymentWorker(settings).run())

    async def none_pending() -> bool:
        async with services.db.primary.connect() as conn:
            return not (await conn.execute(text(
                "SELECT count(*) FROM payments WHERE id = ANY(CAST(:ids AS uuid[]))"
                " AND status = 'PENDING'"), {"ids": [uuid.UUID(i) for i in ids]})).scalar_one()
    try:
        await _until(none_pending, "the test's payments were never posted", timeout=60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def test_the_next_acceptance_marks_the_rows_produced_before_it(
        migrated, services, make_partner) -> None:
    # The publisher never marks on its own here (ten minutes idle): only an acceptance, or
    # the API's shutdown, can.
    async with isolated(migrated, mark_after_ms=600_000) as (settings, api):
        partner = await make_partner()
        source, destination = await partner.account(balance="10.00"), await partner.account()
        first = await _pay(api, partner, source, destination)

        async def produced() -> bool:  # its request and its PENDING event acknowledged
            return api.publisher.published >= 2
        await _until(produced, "the first payment was never produced")
        assert not await _sent(services, settings, first), "marked in a commit of its own"
        assert api.publisher.busy, "a produced row waiting for its mark is work in hand"

        second = await _pay(api, partner, source, destination)
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
        payment = await _pay(api, partner, source, destination)

        async def marked() -> bool:
            return await _sent(services, settings, payment)
        await _until(marked, "no acceptance came and the publisher never marked the row")

        async def idle() -> bool:
            return not api.publisher.busy
        await _until(idle, "the publisher stayed busy with nothing to do")
    await _posted(services, settings, [payment])
