"""The worker SIGKILLed in the middle of a backlog and restarted: every payment ends with
exactly one terminal status, money is conserved, and the ledger balances."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid

import pytest
from sqlalchemy import text

from paystream.events.kafka import ensure_topics
from paystream.services.app import Services
from paystream.services.ledger import verify_ledger
from paystream.services.payments import CreatePayment

from .conftest import StatusWatcher, start_worker, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKLOG = 2000
ACCOUNTS = 20


async def test_worker_killed_mid_backlog(migrated, server_env, make_partner) -> None:
    suffix = uuid.uuid4().hex[:8]
    kafka = migrated.kafka.model_copy(update={
        "requested_topic": f"crash.requested.{suffix}", "status_topic": f"crash.status.{suffix}",
        "worker_group": f"crash-{suffix}",
    })
    settings = migrated.model_copy(update={"kafka": kafka})
    await ensure_topics(kafka)
    env = {**server_env, "PAYSTREAM_KAFKA__REQUESTED_TOPIC": kafka.requested_topic,
           "PAYSTREAM_KAFKA__STATUS_TOPIC": kafka.status_topic,
           "PAYSTREAM_KAFKA__WORKER_GROUP": kafka.worker_group,
           # Small batches, so the kill lands between many commits.
           "PAYSTREAM_KAFKA__WORKER_BATCH_SIZE": "50"}

    services = Services.create(settings)
    await services.start()
    watcher = StatusWatcher(settings)
    await watcher.start()
    try:
        partner = await make_partner()
        partner.services = services
        # Some accounts start poor, so part of the backlog fails with INSUFFICIENT_FUNDS.
        accounts = [await partner.account(balance=random.choice(["0", "5.00", "50.00", "500.00"]))
                    for _ in range(ACCOUNTS)]
        caller = await services.auth.caller_for(f"Bearer {partner.key}")
        rng = random.Random(7)
        semaphore = asyncio.Semaphore(32)

        async def create(i: int) -> str:
            source, destination = rng.sample(accounts, 2)
            async with semaphore:
                row = await services.payments.create(caller, CreatePayment(
                    idempotency_key=f"crash-{i}", source_account_id=source,
                    destination_account_id=destination, amount=f"{rng.randint(1, 3000) / 100:.2f}",
                    currency="USD"))
            return str(row.id)

        ids = await asyncio.gather(*(create(i) for i in range(BACKLOG)))
        initial = await _balances(services, accounts)

        worker = start_worker(env)
        try:
            await watcher.wait_count(ids, at_least=BACKLOG // 4, timeout=120)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            done_at_kill = watcher.terminal_count(ids)
            assert done_at_kill < BACKLOG, "the worker finished before it was killed"
            worker = start_worker(env)
            await watcher.wait_count(ids, at_least=BACKLOG, timeout=180)
        finally:
            stop_process(worker)

        async with services.db.primary.connect() as conn:
            statuses = dict((await conn.execute(text(
                "SELECT status, count(*) FROM payments WHERE id = ANY(CAST(:ids AS uuid[]))"
                " GROUP BY status"), {"ids": [uuid.UUID(i) for i in ids]})).all())
            assert statuses.get("PENDING", 0) == 0
            assert statuses.get("SUCCEEDED", 0) + statuses.get("FAILED", 0) == BACKLOG
            assert statuses.get("SUCCEEDED", 0) > 0 and statuses.get("FAILED", 0) > 0
            # Each SUCCEEDED payment has exactly two entries summing to zero; FAILED has none.
            bad = (await conn.execute(text(
                "SELECT p.id FROM payments p LEFT JOIN ledger_entries e ON e.payment_id = p.id"
                " WHERE p.id = ANY(CAST(:ids AS uuid[])) GROUP BY p.id, p.status, p.amount_minor"
                " HAVING (p.status = 'SUCCEEDED' AND (count(e.id) <> 2 OR sum(e.amount_minor) <> 0"
                "          OR max(e.amount_minor) <> p.amount_minor))"
                "     OR (p.status = 'FAILED' AND count(e.id) <> 0)"), {"ids": [uuid.UUID(i) for i in ids]}
            )).all()
            assert bad == []
        final = await _balances(services, accounts)
        assert sum(final.values()) == sum(initial.values())
        assert min(final.values()) >= 0
        entries = await _entry_sums(services, accounts)
        # Every balance is the sum of its ledger entries (the opening balance is a FUNDING
        # posting), and the whole ledger verifies.
        assert all(final[a] == entries.get(a, 0) for a in accounts)
        report = await verify_ledger(services.db, services.settings)
        assert report.sound, {k: v for k, v in report.violations.items() if v}
    finally:
        await watcher.stop()
        await services.close()


async def _balances(services: Services, accounts: list[str]) -> dict[str, int]:
    async with services.db.primary.connect() as conn:
        rows = await conn.execute(
            text("SELECT id::text, balance_minor FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(a) for a in accounts]})
        return dict(rows.all())


async def _entry_sums(services: Services, accounts: list[str]) -> dict[str, int]:
    async with services.db.primary.connect() as conn:
        rows = await conn.execute(text(
            "SELECT account_id::text, sum(amount_minor)::bigint FROM ledger_entries"
            " WHERE account_id = ANY(CAST(:ids AS uuid[])) GROUP BY account_id"),
            {"ids": [uuid.UUID(a) for a in accounts]})
        return dict(rows.all())
