"""The worker publishes one step behind its posting (``worker.pipeline``): a batch's status
rows are marked sent by the next posting's transaction, by the publisher when no posting
comes, and at shutdown; each on topics and an in-process worker of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from paystream.config import Settings
from paystream.services.app import Services
from paystream.worker.main import PaymentWorker

from .conftest import StatusWatcher, outbox_sent, own_topics, pay, until

pytestmark = pytest.mark.integration


@asynccontextmanager
async def isolated(migrated: Settings, *, mark_after_ms: int) -> AsyncIterator[
        tuple[Settings, Services, StatusWatcher]]:
    """Topics, an API and a status watcher of the test's own."""
    settings = await own_topics(migrated, "pipeline",
                                kafka={"worker_mark_after_ms": mark_after_ms})
    api = Services.create(settings)
    await api.start()
    watcher = StatusWatcher(settings)
    await watcher.start()
    try:
        yield settings, api, watcher
    finally:
        await watcher.stop()
        await api.close()


async def _sent(services: Any, settings: Settings, payment_id: str) -> bool:
    """Whether the worker's status row of the payment (its SUCCEEDED event) is marked
    sent."""
    return await outbox_sent(services, settings.kafka.status_topic, payment_id)


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
            first = await pay(api, partner, source, destination)
            await watcher.terminal(first)  # produced: its row waits for the next posting
            assert not await _sent(services, settings, first)
            second = await pay(api, partner, source, destination)
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
            payment = await pay(api, partner, source, destination)
            await watcher.terminal(payment)
            # No posting follows: the publisher marks the row itself, 20 ms after. The
            # worker gives no signal of it but the row, so this polls, with a deadline.
            await until(lambda: _sent(services, settings, payment), "never marked sent",
                        timeout=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
