"""A worker chosen as a deadlock victim retries the posting: a transient database error is
not a poison message, and the payment must not be parked in the dead-letter topic (where it
would stay PENDING for ever)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text

from .conftest import StatusWatcher, gql
from .invariants import assert_ledger_verified

pytestmark = pytest.mark.integration

CREATE = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id } }"""


async def test_worker_retries_a_posting_that_lost_a_deadlock(client, migrated, worker, make_partner,
                                                             services) -> None:
    partner = await make_partner()
    first, second = sorted([await partner.account(balance="10.00"), await partner.account()])
    watcher = StatusWatcher(migrated)
    await watcher.start()
    try:
        async with services.db.primary.connect() as blocker:
            # The blocker looks for a deadlock only long after the worker does (1 s), so the
            # worker is always the one that finds it and is rolled back, however loaded the
            # machine (a waiter checks once, deadlock_timeout after it began to wait).
            await blocker.execute(text("SET deadlock_timeout = '20s'"))
            # Hold the account the worker locks second (it locks in id order)...
            await blocker.execute(text("SELECT 1 FROM accounts WHERE id = :id FOR NO KEY UPDATE"),
                                  {"id": uuid.UUID(second)})
            body = await gql(client, CREATE, {"input": {
                "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": first,
                "destinationAccountId": second, "amount": "1.00", "currency": "USD"}},
                key=partner.key)
            payment_id = body["data"]["createPayment"]["id"]
            # ...until the worker holds the first and waits for it (no event to await here:
            # the server's lock table is polled, with a deadline)...
            deadline = asyncio.get_running_loop().time() + 30
            async with services.db.primary.connect() as probe:
                while not (await probe.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE '%FROM accounts%' AND pid <> pg_backend_pid()"))).scalar():
                    assert asyncio.get_running_loop().time() < deadline, "the worker never waited"
                    await asyncio.sleep(0.05)
                    await probe.rollback()
            # ...then take the first too: a deadlock, and the worker loses.
            await blocker.execute(text("SELECT 1 FROM accounts WHERE id = :id FOR NO KEY UPDATE"),
                                  {"id": uuid.UUID(first)})
            await blocker.rollback()
        event = await watcher.terminal(payment_id, timeout=30)
        assert event["status"] == "SUCCEEDED"
    finally:
        await watcher.stop()
    await assert_ledger_verified(services)
