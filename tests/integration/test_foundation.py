"""The foundation: replica streaming, the schema's money constraints, the CLI, account(id)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from paystream.config import Settings
from paystream.db import Database

from .conftest import gql, wait_for_replay

pytestmark = pytest.mark.integration

ACCOUNT = "query($id: ID!) { account(id: $id) { id name currency balance } }"


async def test_row_written_on_primary_is_read_from_replica(services) -> None:
    db: Database = services.db
    marker = uuid.uuid4()
    async with db.write_session() as session:
        await session.execute(
            text("INSERT INTO partners (id, name) VALUES (:id, :name)"),
            {"id": marker, "name": f"replicated-{marker}"},
        )
    await wait_for_replay(db)
    async with db.replicas[0].connect() as conn:
        in_recovery = (await conn.execute(text("SELECT pg_is_in_recovery()"))).scalar()
        name = (
            await conn.execute(text("SELECT name FROM partners WHERE id = :id"), {"id": marker})
        ).scalar()
    assert in_recovery is True
    assert name == f"replicated-{marker}"


async def test_replica_refuses_writes(services) -> None:
    async with services.db.replicas[0].connect() as conn:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            await conn.execute(text("INSERT INTO partners (id, name) VALUES (gen_random_uuid(), 'x')"))


async def test_migration_created_schema(services) -> None:
    async with services.db.primary.connect() as conn:
        tables = set(
            (await conn.execute(text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ))).scalars()
        )
    assert {"partners", "api_keys", "accounts", "payments", "ledger_entries", "outbox"} <= tables


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE accounts SET balance_minor = -1 WHERE id = :account",
        ("INSERT INTO payments (id, partner_id, idempotency_key, request_hash, source_account_id,"
        " destination_account_id, amount_minor, currency, status) VALUES (gen_random_uuid(),"
        " :partner, 'k', repeat('a', 64), :account, :account, 0, 'USD', 'PENDING')"),
        ("INSERT INTO payments (id, partner_id, idempotency_key, request_hash, source_account_id,"
        " destination_account_id, amount_minor, currency, status) VALUES (gen_random_uuid(),"
        " :partner, 'k', repeat('a', 64), :account, :account, 1000000000000001, 'USD', 'PENDING')"),
    ],
    ids=["negative-balance", "zero-amount", "amount-over-limit"],
)
async def test_constraints_reject_bad_money_rows(services, make_partner, statement: str) -> None:
    partner = await make_partner()
    account = await partner.account()
    async with services.db.primary.connect() as conn:
        partner_id = (await conn.execute(
            text("SELECT partner_id FROM accounts WHERE id = :id"), {"id": uuid.UUID(account)}
        )).scalar()
        with pytest.raises(IntegrityError):
            await conn.execute(text(statement), {"account": uuid.UUID(account), "partner": partner_id})
        await conn.rollback()


async def test_unbalanced_ledger_entries_are_refused(services, make_partner) -> None:
    """Each statement's postings must sum to zero (migration 0013): an unbalanced posting is
    refused by its insert, and so is a balanced one inserted leg by leg; a statement holding
    two balanced postings passes."""
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    s, d = uuid.UUID(source), uuid.UUID(destination)
    insert = ("INSERT INTO ledger_entries (posting_id, kind, payment_id, account_id, amount_minor,"
              " balance_after_minor) VALUES ")
    async with services.db.primary.connect() as conn:
        partner_id = (await conn.execute(
            text("SELECT partner_id FROM accounts WHERE id = :id"), {"id": s})).scalar()
        payments = [uuid.uuid4() for _ in range(2)]
        for payment in payments:
            await conn.execute(text(
                "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
                " source_account_id, destination_account_id, amount_minor, currency, status)"
                " VALUES (:id, :partner, :key, repeat('a', 64), :s, :d, 100, 'USD', 'PENDING')"),
                {"id": payment, "partner": partner_id, "key": str(payment), "s": s, "d": d})
        p, q = payments
        for statement in (
            insert + "(:p, 'PAYMENT', :p, :s, -100, 0), (:p, 'PAYMENT', :p, :d, 99, 99)",
            # Balanced over the transaction, but the first statement's posting sums to -100.
            insert + "(:p, 'PAYMENT', :p, :s, -100, 0)",
            # Two postings that sum to zero together but not each.
            insert + "(:p, 'PAYMENT', :p, :s, -100, 0), (:q, 'PAYMENT', :q, :d, 100, 100)",
        ):
            savepoint = await conn.begin_nested()
            with pytest.raises(DBAPIError, match="sum to"):
                await conn.execute(text(statement), {"p": p, "q": q, "s": s, "d": d})
            await savepoint.rollback()
        await conn.execute(text(
            insert + "(:p, 'PAYMENT', :p, :s, -100, 0), (:p, 'PAYMENT', :p, :d, 100, 100),"
            " (:q, 'PAYMENT', :q, :d, -1, 99), (:q, 'PAYMENT', :q, :s, 1, 1)"),
            {"p": p, "q": q, "s": s, "d": d})
        sums = (await conn.execute(text(
            "SELECT posting_id, sum(amount_minor) FROM ledger_entries"
            " WHERE posting_id IN (:p, :q) GROUP BY posting_id"), {"p": p, "q": q})).all()
        assert sorted(int(total) for _, total in sums) == [0, 0]
        await conn.rollback()  # nothing of this test stays behind for the ledger's checks


def test_cli_creates_partner_and_account(server_env: dict[str, str], migrated: Settings) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "paystream.cli", *args], check=False,
                              env=server_env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    key = run("partner", "create", name)
    account_id = run("account", "create", "--partner", name, "--name", "Ops", "--currency", "JPY",
                     "--balance", "5000")
    assert key.startswith("psk_") and len(key) > 40
    assert uuid.UUID(account_id)
    # The key is stored hashed: nowhere in the api_keys table in clear.
    dump = subprocess.run(
        [sys.executable, "-c", ("import asyncio,os\n"
         "from sqlalchemy import text\n"
         "from sqlalchemy.ext.asyncio import create_async_engine\n"
         "async def m():\n"
         " e=create_async_engine(os.environ['PAYSTREAM_DB__PRIMARY_URL'])\n"
         " async with e.connect() as c: print((await c.execute(text('SELECT string_agg(api_keys::text, chr(10)) FROM api_keys'))).scalar())\n"
         " await e.dispose()\n"
         "asyncio.run(m())")],
        env=server_env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert dump.returncode == 0, dump.stderr
    assert key not in dump.stdout and key[4:] not in dump.stdout


async def test_account_query_returns_balance_to_owner(client, make_partner) -> None:
    partner = await make_partner()
    account = await partner.account(currency="BHD", balance="12.345", name="Main")
    body = await gql(client, ACCOUNT, {"id": account}, key=partner.key)
    assert body == {"data": {"account": {"id": account, "name": "Main", "currency": "BHD",
                                         "balance": "12.345"}}}


async def test_unknown_or_foreign_account_is_null(client, make_partner) -> None:
    owner, stranger = await make_partner(), await make_partner()
    account = await owner.account()
    for account_id in (account, str(uuid.uuid4()), "not-a-uuid"):
        body = await gql(client, ACCOUNT, {"id": account_id}, key=stranger.key)
        assert body == {"data": {"account": None}}


async def test_missing_or_bad_key_is_unauthenticated(client, make_partner) -> None:
    partner = await make_partner()
    account = await partner.account()
    for key in (None, "psk_nope"):
        body = await gql(client, ACCOUNT, {"id": account}, key=key)
        assert body["data"] == {"account": None}
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_health_and_readiness(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["primary"] is True
    assert ready.json()["checks"]["replica0"] is True


async def replayed(settings: Settings) -> None:
    db = Database(settings.db)
    try:
        await wait_for_replay(db)
    finally:
        await db.dispose()


async def test_cli_rotates_a_key_by_listing_and_revoking(
    server_env: dict[str, str], client, migrated: Settings,
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"

    def run(*args: str, ok: bool = True) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "paystream.cli", *args], check=False,
                              env=server_env,
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode == 0) == ok, (done.stdout, done.stderr)
        return (done.stdout if ok else done.stderr).strip().splitlines()

    old = run("partner", "create", name)[-1]
    new = run("partner", "key", name, "--scope", "payments:read")[-1]
    listing = run("partner", "keys", name)
    assert len(listing) == 2 and all(line.endswith("live") for line in listing)
    assert listing[0].split()[1] == old[:12] + "..."  # oldest first, shown by prefix only
    assert listing[1].split()[2] == "payments:read"
    assert old not in "\n".join(listing) and new not in "\n".join(listing)

    assert run("partner", "revoke", listing[0].split()[0]) == ["revoked"]
    assert "revoked" in run("partner", "keys", name)[0] and run("partner", "keys", name)[1].endswith("live")
    assert "no live key" in run("partner", "revoke", listing[0].split()[0], ok=False)[-1]
    # Keys are looked up on a replica first: a revoked key passes until the replica replays.
    await replayed(migrated)
    body = await gql(client, "query { payment(id: \"x\") { id } }", key=old)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    body = await gql(client, "query { payment(id: \"x\") { id } }", key=new)
    assert body == {"data": {"payment": None}}
    # A leaked key can be revoked by itself, too.
    assert run("partner", "revoke", new) == ["revoked"]
    await replayed(migrated)
    body = await gql(client, "query { payment(id: \"x\") { id } }", key=new)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def _seq_scans_of_a_grown_table(db: Database) -> int:
    """Sequential scans of a lock of 5 rows by id, on a connection whose statement ran 8 times
    while its table had 50 rows, once the table has 20,000 (a new deployment's first hour)."""
    table = f"plan_probe_{uuid.uuid4().hex[:12]}"
    lock = text(f"SELECT id FROM {table} WHERE id = ANY(CAST(:ids AS uuid[]))"
                " ORDER BY id FOR NO KEY UPDATE")
    grow = text(f"INSERT INTO {table} SELECT gen_random_uuid(), repeat('p', 300)"
                " FROM generate_series(1, :n)")
    async with db.primary.connect() as conn:
        try:
            await conn.execute(text(f"CREATE TABLE {table} (id uuid PRIMARY KEY, pad text)"))
            await conn.execute(grow, {"n": 50})
            await conn.execute(text(f"ANALYZE {table}"))
            await conn.commit()
            ids = list((await conn.execute(text(f"SELECT id FROM {table} LIMIT 5"))).scalars())
            for _ in range(8):
                await conn.execute(lock, {"ids": ids})
                await conn.commit()
            await conn.execute(grow, {"n": 20_000})
            await conn.commit()
            # This backend's scans not yet reported (some of earlier transactions too).
            scans = text("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = :t")
            before = int((await conn.execute(scans, {"t": table})).scalar_one())
            await conn.execute(lock, {"ids": ids})
            return int((await conn.execute(scans, {"t": table})).scalar_one()) - before
        finally:
            await conn.rollback()
            await conn.execute(text(f"DROP TABLE {table}"))
            await conn.commit()


async def test_a_statement_is_planned_for_its_table_as_it_is_now(services) -> None:
    """A prepared statement's generic plan, chosen while its table was small, stayed cached on
    its connection: the worker's lock of a batch's payments kept a sequential scan of a table
    grown to 65,000 rows (78 ms a call, not 2). Every connection plans each execution."""
    assert await _seq_scans_of_a_grown_table(services.db) == 0
