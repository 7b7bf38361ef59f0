"""The closed ledger: opening balances and fundings are postings from the settlement accounts,
`paystream ledger verify` proves every balance from its entries (and fails, naming the
violation, on a ledger corrupted on purpose), and migration 0002 books the opening balances
of existing data."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from paystream.config import Settings, environment_for
from paystream.db import Database
from paystream.db.migrate import upgrade_async
from paystream.services.admin import new_account, new_partner
from paystream.services.ledger import verify_ledger

from .conftest import gql

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paystream.cli", *args], env=env, check=False,
                          capture_output=True, text=True, timeout=60)


def test_account_create_takes_zero_and_books_an_opening_balance(server_env, migrated) -> None:
    partner = f"ledger-{uuid.uuid4().hex[:8]}"
    assert cli(server_env, "partner", "create", partner).returncode == 0
    for balance in (("--balance", "0.00"), ("--balance", "0"), ()):
        done = cli(server_env, "account", "create", "--partner", partner, "--name", "zero",
                   "--currency", "USD", *balance)
        assert done.returncode == 0, done.stderr
        uuid.UUID(done.stdout.splitlines()[-1])
        assert "posting" not in done.stdout  # nothing to post for zero
    done = cli(server_env, "account", "create", "--partner", partner, "--name", "funded",
               "--currency", "USD", "--balance", "12.50")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    account = lines[-1]
    assert lines[0].startswith("posting ") and "FUNDING 12.50 USD" in lines[0]
    assert any(line.strip().startswith(account) and "12.50" in line for line in lines[1:3])
    assert any("-12.50" in line for line in lines[1:3])  # the settlement account's leg


async def test_fund_is_a_posting_and_readers_see_it_at_once(client, server_env, services,
                                                           make_partner) -> None:
    partner = await make_partner()
    account = await partner.account(balance="1.00")
    query = "query($id: ID!) { account(id: $id) { balance } }"
    before = await gql(client, query, {"id": account}, key=partner.key)
    assert before["data"] == {"account": {"balance": "1.00"}}  # now cached at this version
    done = await asyncio.to_thread(cli, server_env, "account", "fund", account, "--amount", "2.25")
    assert done.returncode == 0, done.stderr
    assert "FUNDING 2.25 USD" in done.stdout and "balance after 3.25" in done.stdout
    after = await gql(client, query, {"id": account}, key=partner.key)
    assert after["data"] == {"account": {"balance": "3.25"}}
    async with services.db.primary.connect() as conn:
        entries = (await conn.execute(text(
            "SELECT kind, amount_minor, balance_after_minor FROM ledger_entries"
            " WHERE account_id = :a ORDER BY id"), {"a": uuid.UUID(account)})).all()
    assert [tuple(e) for e in entries] == [("FUNDING", 100, 100), ("FUNDING", 225, 325)]
    refused = await asyncio.to_thread(cli, server_env, "account", "fund", account, "--amount", "-1")
    assert refused.returncode != 0 and "greater than 0" in refused.stderr
    missing = await asyncio.to_thread(cli, server_env, "account", "fund", str(uuid.uuid4()),
                                      "--amount", "1.00")
    assert missing.returncode != 0 and "no such account" in missing.stderr


@pytest.fixture
async def scratch(migrated: Settings) -> AsyncIterator[Settings]:
    """A database of its own on the test primary: these tests corrupt it on purpose."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    base, _, _ = migrated.db.primary_url.rpartition("/")
    admin = create_async_engine(migrated.db.primary_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_settings = migrated.db.model_copy(update={"primary_url": f"{base}/{name}", "replica_urls": []})
    try:
        yield migrated.model_copy(update={"db": db_settings})
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


async def test_verify_passes_then_names_each_corruption(scratch: Settings) -> None:
    await upgrade_async(scratch.db.primary_url)
    db = Database(scratch.db)
    env = environment_for(scratch, dict(os.environ))
    try:
        await new_partner(db, "scratch")
        a = await new_account(db, partner="scratch", name="a", currency="USD", balance="10.00")
        b = await new_account(db, partner="scratch", name="b", currency="EUR", balance="0")
        report = await verify_ledger(db, scratch)
        assert report.sound, report.violations
        assert (report.accounts, report.settlement_accounts, report.postings) == (2, 1, 1)
        done = await asyncio.to_thread(cli, env, "ledger", "verify")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines()[-1].startswith("ledger sound: 2 accounts, 1 settlement")

        async with db.write_session() as session:
            await session.execute(text(
                "UPDATE accounts SET balance_minor = balance_minor + 1 WHERE id = :a"), {"a": a})
            partner_id = (await session.execute(text(
                "SELECT partner_id FROM accounts WHERE id = :a"), {"a": a})).scalar()
            stranded = uuid.uuid4()
            await session.execute(text(
                "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
                " source_account_id, destination_account_id, amount_minor, currency, status)"
                " VALUES (:id, :p, 'k', repeat('a', 64), :a, :b, 1, 'USD', 'PENDING')"),
                {"id": stranded, "p": partner_id, "a": a, "b": b})
        report = await verify_ledger(db, scratch)
        assert not report.sound
        assert report.violations["balance differs from the sum of its entries"] == [
            f"{a}: balance 1001, entries 1000"]
        assert report.violations["PENDING payment has nothing queued"] == [str(stranded)]
        done = await asyncio.to_thread(cli, env, "ledger", "verify")
        assert done.returncode == 1
        assert f"VIOLATION balance differs from the sum of its entries: {a}" in done.stdout
        assert f"VIOLATION PENDING payment has nothing queued: {stranded}" in done.stdout
        assert "2 violations" in done.stdout.splitlines()[-1]
    finally:
        await db.dispose()


async def test_migration_books_existing_opening_balances(scratch: Settings) -> None:
    """Data written before the closed ledger: balances with no entries behind them, a posted
    payment, a PENDING one. After 0002 the ledger verifies."""
    await upgrade_async(scratch.db.primary_url, "0001")
    engine = create_async_engine(scratch.db.primary_url)
    partner, a, b, posted, pending = (uuid.uuid4() for _ in range(5))
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO partners (id, name) VALUES (:p, 'old')"), {"p": partner})
        await conn.execute(text(
            "INSERT INTO accounts (id, partner_id, name, currency, balance_minor) VALUES"
            " (:a, :p, 'a', 'USD', 700), (:b, :p, 'b', 'USD', 300)"), {"a": a, "b": b, "p": partner})
        for payment, status in ((posted, "SUCCEEDED"), (pending, "PENDING")):
            await conn.execute(text(
                "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
                " source_account_id, destination_account_id, amount_minor, currency, status)"
                " VALUES (:id, :p, :k, repeat('a', 64), :a, :b, 300, 'USD', :s)"),
                {"id": payment, "p": partner, "k": str(payment), "a": a, "b": b, "s": status})
        await conn.execute(text(
            "INSERT INTO ledger_entries (payment_id, account_id, amount_minor, balance_after_minor)"
            " VALUES (:p, :a, -300, 700), (:p, :b, 300, 300)"), {"p": posted, "a": a, "b": b})
    await engine.dispose()

    await upgrade_async(scratch.db.primary_url)
    db = Database(scratch.db)
    try:
        report = await verify_ledger(db, scratch)
        assert report.sound, report.violations
        async with db.write_session() as session:
            funding = (await session.execute(text(
                "SELECT account_id, amount_minor FROM ledger_entries WHERE kind = 'FUNDING'"
                " ORDER BY amount_minor"))).all()
            settlement = (await session.execute(text(
                "SELECT balance_minor FROM accounts WHERE partner_id = :s"),
                {"s": uuid.UUID(int=1)})).scalar()
        # a held 1000 before paying 300 to b; b held nothing of its own.
        assert [(row[0] == a, row[1]) for row in funding] == [(False, -1000), (True, 1000)]
        assert settlement == -1000
    finally:
        await db.dispose()


async def test_relay_prunes_sent_rows_past_retention_but_keeps_pending_requests(
        scratch: Settings) -> None:
    """Sent outbox rows older than the retention go, in bounded batches; unsent rows, recent
    ones and the request of a payment still PENDING stay."""
    from paystream.config import OutboxSettings
    from paystream.worker.outbox import OutboxRelay

    await upgrade_async(scratch.db.primary_url)
    db = Database(scratch.db)
    try:
        await new_partner(db, "retention")
        a = await new_account(db, partner="retention", name="a", currency="USD", balance="1.00")
        requested = scratch.kafka.requested_topic
        async with db.write_session() as session:
            partner_id = (await session.execute(text(
                "SELECT partner_id FROM accounts WHERE id = :a"), {"a": a})).scalar()
            pending = uuid.uuid4()
            await session.execute(text(
                "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
                " source_account_id, destination_account_id, amount_minor, currency, status)"
                " VALUES (:id, :p, 'k', repeat('a', 64), :a, :a, 1, 'USD', 'PENDING')"),
                {"id": pending, "p": partner_id, "a": a})
            # 5 old sent status rows, 1 recent sent, 1 old unsent, the PENDING payment's old request.
            await session.execute(text(
                "INSERT INTO outbox (topic, key, payload, created_at, sent_at)"
                " SELECT 'payments.status', 'k', '{}', now() - interval '9 days',"
                "        now() - interval '8 days' FROM generate_series(1, 5)"))
            await session.execute(text(
                "INSERT INTO outbox (topic, key, payload, sent_at)"
                " VALUES ('payments.status', 'recent', '{}', now())"))
            await session.execute(text(
                "INSERT INTO outbox (topic, key, payload, created_at)"
                " VALUES ('payments.status', 'unsent', '{}', now() - interval '9 days')"))
            await session.execute(text(
                "INSERT INTO outbox (topic, key, payload, created_at, sent_at) VALUES"
                " (:t, 'pending', jsonb_build_object('payment_id', CAST(:p AS text)),"
                "  now() - interval '9 days', now() - interval '8 days')"),
                {"t": requested, "p": str(pending)})
        relay = OutboxRelay(db, producer=None, topic="payments.status",  # type: ignore[arg-type]
                            requested_topic=requested,
                            settings=OutboxSettings(retention_days=7, prune_batch=2))
        assert [await relay.prune_once() for _ in range(4)] == [2, 2, 1, 0]
        async with db.write_session() as session:
            left = sorted((await session.execute(text("SELECT key FROM outbox"))).scalars().all())
        assert left == ["pending", "recent", "unsent"]
        report = await verify_ledger(db, scratch)
        assert report.violations["PENDING payment has nothing queued"] == []
    finally:
        await db.dispose()


async def test_verify_names_holds_and_refunds_that_disagree(scratch: Settings) -> None:
    """The lifecycle checks: held amounts against open holds, a hold against its payment, a
    payment's refunded amount against its refunds, refunds beyond what the payment moved."""
    await upgrade_async(scratch.db.primary_url)
    db = Database(scratch.db)
    try:
        await new_partner(db, "scratch")
        a = await new_account(db, partner="scratch", name="a", currency="USD", balance="10.00")
        b = await new_account(db, partner="scratch", name="b", currency="USD", balance="0")
        authorized, refunded, refund = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        async with db.write_session() as session:
            partner_id = (await session.execute(text(
                "SELECT partner_id FROM accounts WHERE id = :a"), {"a": a})).scalar()
            # An AUTHORIZED payment of 3.00 whose hold says 2.00, and 5.00 held on the account.
            await session.execute(text(
                "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
                " source_account_id, destination_account_id, amount_minor, currency, status,"
                " capture) VALUES (:id, :p, 'h', repeat('a', 64), :a, :b, 300, 'USD',"
                " 'AUTHORIZED', false)"), {"id": authorized, "p": partner_id, "a": a, "b": b})
            await session.execute(text(
                "INSERT INTO holds (payment_id, account_id, amount_minor, status, expires_at)"
                " VALUES (:id, :a, 200, 'OPEN', now() + interval '1 day')"),
                {"id": authorized, "a": a})
            await session.execute(text("UPDATE accounts SET held_minor = 500 WHERE id = :a"),
                                  {"a": a})
            # A SUCCEEDED payment of 1.00 (posted) claiming a 1.00 refund that has no entries.
            await session.execute(text(
                "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
                " source_account_id, destination_account_id, amount_minor, currency, status,"
                " refunded_minor) VALUES (:id, :p, 'r', repeat('a', 64), :a, :b, 100, 'USD',"
                " 'SUCCEEDED', 0)"), {"id": refunded, "p": partner_id, "a": a, "b": b})
            await session.execute(text(
                "INSERT INTO ledger_entries (posting_id, kind, payment_id, account_id,"
                " amount_minor, balance_after_minor) VALUES (:p, 'PAYMENT', :p, :a, -100, 900),"
                " (:p, 'PAYMENT', :p, :b, 100, 100)"), {"p": refunded, "a": a, "b": b})
            for account, after in ((a, 900), (b, 100)):
                await session.execute(text(
                    "UPDATE accounts SET balance_minor = :after WHERE id = :a"),
                    {"a": account, "after": after})
            await session.execute(text(
                "INSERT INTO refunds (id, partner_id, idempotency_key, request_hash, payment_id,"
                " amount_minor, status) VALUES (:id, :p, 'x', repeat('a', 64), :pay, 100,"
                " 'SUCCEEDED')"), {"id": refund, "p": partner_id, "pay": refunded})
        report = await verify_ledger(db, scratch)
        violations = {k: v for k, v in report.violations.items() if v}
        assert violations == {
            "held differs from the open holds": [f"{a}: held 500, open holds 200"],
            "hold disagrees with its payment": [f"{authorized} (AUTHORIZED): hold OPEN"],
            "refunded amount differs from the SUCCEEDED refunds": [
                f"{refunded}: refunded 0, refunds 100"],
            "SUCCEEDED refund lacks exactly its two entries": [f"{refund}: 0 entries"],
        }
    finally:
        await db.dispose()


async def test_verify_is_not_bound_by_the_request_statement_timeout(migrated) -> None:
    """Each check reads whole tables; with the requests' statement timeout, verify failed on a
    drained bench database (20,000 payments past 10 s). Here a check is held up for longer
    than a 100 ms statement timeout by another transaction's lock on the ledger."""
    hasty = Database(migrated.db.model_copy(update={"statement_timeout_ms": 100}))
    holder = create_async_engine(migrated.db.primary_url)
    locked = asyncio.Event()

    async def hold() -> None:
        async with holder.begin() as conn:
            await conn.execute(text("LOCK TABLE ledger_entries IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            await asyncio.sleep(0.5)  # the hold itself: what the checks must outlast

    try:
        holding = asyncio.create_task(hold())
        await locked.wait()
        report = await verify_ledger(hasty, migrated)
        await holding
    finally:
        await hasty.dispose()
        await holder.dispose()
    assert report.sound, report.violations


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows a plan's scans read: returned and removed by their filters, over the tree."""
    read = 0
    if "Scan" in str(plan.get("Node Type", "")):
        read += int(plan.get("Actual Rows", 0)) + int(plan.get("Rows Removed by Filter", 0))
    for child in plan.get("Plans", ()):
        read += _rows_read(child)
    return read


async def test_pruning_with_nothing_old_enough_reads_no_table(scratch: Settings) -> None:
    """The relay prunes every second; with every row younger than the retention (the normal
    case) a pass must not read the outbox or the feed end to end (it did: the primary key's
    order, filtered on the age, until migration 0012's indexes)."""
    from paystream.db import events, outbox

    await upgrade_async(scratch.db.primary_url)
    db = Database(scratch.db)
    try:
        async with db.write_session() as session:
            await session.execute(text(
                "INSERT INTO outbox (topic, key, payload, sent_at)"
                " SELECT 'payments.status', 'k', '{}', now() FROM generate_series(1, 5000)"))
            await session.execute(text(
                "INSERT INTO events (type, payment_id, version, source_account_id,"
                " destination_account_id, source_partner_id, destination_partner_id, payload)"
                " SELECT 'payment.succeeded', gen_random_uuid(), 2, gen_random_uuid(),"
                " gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), '{}'"
                " FROM generate_series(1, 5000)"))
        async with db.write_session() as session:
            await session.execute(text("ANALYZE outbox"))
            await session.execute(text("ANALYZE events"))
        for statement, params in (
                (outbox._PRUNE, {"seconds": 7 * 86400, "limit": 1000,
                                 "requested": "payments.requested"}),
                (events._PRUNE, {"keep": 30 * 86400, "limit": 1000})):
            async with db.write_session() as session:
                explained = (await session.execute(
                    text(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement.text}"), params)).scalar_one()
                await session.rollback()
            plan = (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]
            assert _rows_read(plan) < 50, (statement.text, plan)
    finally:
        await db.dispose()


async def test_migrations_down_to_the_closed_ledger_and_up_again(scratch: Settings) -> None:
    """Every migration after 0002 (which cannot be undone) downgrades, and the schema then
    upgrades back to the same tables and indexes."""
    from alembic import command

    from paystream.db.migrate import alembic_config

    async def schema() -> list[tuple[str, str]]:
        db = Database(scratch.db)
        try:
            async with db.write_session() as session:
                rows = await session.execute(text(
                    "SELECT c.relkind::text, c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') ORDER BY 2"))
                return [(str(r[0]), str(r[1])) for r in rows]
        finally:
            await db.dispose()

    await upgrade_async(scratch.db.primary_url)
    head = await schema()
    config = alembic_config(scratch.db.primary_url)
    await asyncio.to_thread(command.downgrade, config, "0002")
    down = await schema()
    assert ("r", "events") in head and ("r", "events") not in down
    assert ("i", "events_created_idx") not in down and ("i", "outbox_created_idx") not in down
    await upgrade_async(scratch.db.primary_url)
    assert await schema() == head
