"""The worker publishes one step behind its posting (``worker.pipeline``): a batch's status
rows are marked sent by the next posting's transaction, by the publisher when no posting
comes, and at shutdown; each on topics and an in-process worker of its own."""

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

from .conftest import StatusWatcher

pytestmark = pytest.mark.integration


@asynccontextmanager
async def isolated(migrated: Settings, *, mark_after_ms: int) -> AsyncIterator[
        tuple[Settings, Services, StatusWatcher]]:
    """Topics, an API and a status watcher of the test's own. The relay's sweep only takes
    rows an hour old, so whatever marks a row sent here is the pipeline."""
    suffix = uuid.uuid4().hex[:8]
    kafka = migrated.kafka.model_copy(update={
        "requested_topic": f"pipeline.requested.{suffix}",
        "status_topic": f"pipeline.status.{suffix}", "dlq_topic": f"pipeline.dlq.{suffix}",
        "worker_group": f"pipeline-{suffix}", "worker_mark_after_ms": mark_after_ms})
    settings = migrated.model_copy(update={
        "kafka": kafka, "outbox": migrated.outbox.model_copy(update={"relay_min_age_s": 3600})})
    await ensure_topics(settings.kafka)
    api = Services.create(settings)
    await api.start()
    watcher = StatusWatcher(settings)
    await watcher.start()
    try:
        yield settings, api, watcher
    finally:
        await watcher.stop()
        await api.close()


async def _pay(api: Services, partner: Any, source: str, destination: str) -> str:
    caller = await api.auth.caller_for(f"Bearer {partner.key}")
    row = await api.payments.create(caller, CreatePayment(
        idempotency_key=uuid.uuid4().hex, source_account_id=source,
        destination_account_id=destination, amount="1.00", currency="USD"))
    return str(row.id)


async def _sent(services: Any, settings: Settings, payment_id: str) -> bool:
    """Whether the worker's status row of the payment (its SUCCEEDED event) is marked sent."""
    async with services.db.primary.connect() as conn:
        return bool((await conn.execute(text(
            "SELECT sent_at IS NOT NULL FROM outbox WHERE topic = :t"
            " AND payload->>'payment_id' = :p"),
            {"t": settings.kafka.status_topic, "p": payment_id})).scalar_one())


async def test_the_next_posting_marks_the_rows_of_the_batch_before_it(
        migrated, services, make_partner) -> None:
    # The publisher never marks on its own here (ten minutes idle): only a posting, or the
    # worker's stop, can.
    async with isolated(migrated, mark_after_ms=600_000) as (settings, api, watcher):
        partner = await make_partner()
        source, destination = await partner.account(balance="10.00"), await partner.account()
        worker = PaymentWorker(settings)
        task = asyncio.ensure_future(worker.run())
        try:
            first = await _pay(api, partner, source, destination)
            await watcher.terminal(first)  # produced: its row waits for the next posting
            assert not await _sent(services, settings, first)
            second = await _pay(api, partner, source, destination)
            await watcher.terminal(second)
            assert await _sent(services, settings, first)
            assert not await _sent(services, settings, second)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Stopping, the worker marks what it produced.
        assert await _sent(services, settings, second)


async def test_an_idle_worker_marks_what_it_produced(migrated, services, make_partner) -> None:
    async with isolated(migrated, mark_after_ms=20) as (settings, api, watcher):
        partner = await make_partner()
        source, destination = await partner.account(balance="10.00"), await partner.account()
        task = asyncio.ensure_future(PaymentWorker(settings).run())
        try:
            payment = await _pay(api, partner, source, destination)
            await watcher.terminal(payment)
            # No posting follows: the publisher marks the row itself, 20 ms after. The
            # worker gives no signal of it but the row, so this polls, with a deadline.
            deadline = asyncio.get_running_loop().time() + 10
            while not await _sent(services, settings, payment):
                assert asyncio.get_running_loop().time() < deadline, "never marked sent"
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
