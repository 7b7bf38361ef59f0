"""What must hold after any fault: checked on the primary (the source of truth) and on the
cache, for a set of accounts and the payments among them."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from sqlalchemy import text


async def balances(services: Any, accounts: list[str]) -> dict[str, int]:
    async with services.db.primary.connect() as conn:
        rows = await conn.execute(
            text("SELECT id::text, balance_minor FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(a) for a in accounts]})
        return dict(rows.all())


async def assert_ledger_sound(services: Any, accounts: list[str], opening: dict[str, int],
                              payment_ids: list[str]) -> dict[str, int]:
    """Every payment terminal; money conserved; no balance negative, ever (each entry's
    balance after it too); each SUCCEEDED payment two entries summing to zero (PAYMENT, or
    CAPTURE of the captured amount), a FAILED or CANCELED one none; each balance the sum of
    its entries; and the whole ledger verified (holds and refunds included). Returns the
    count of each status."""
    ids = [uuid.UUID(p) for p in payment_ids]
    async with services.db.primary.connect() as conn:
        statuses = dict((await conn.execute(text(
            "SELECT status, count(*) FROM payments WHERE id = ANY(CAST(:ids AS uuid[]))"
            " GROUP BY status"), {"ids": ids})).all())
        assert statuses.get("PENDING", 0) == statuses.get("AUTHORIZED", 0) == 0, statuses
        assert statuses.get("SUCCEEDED", 0) + statuses.get("FAILED", 0) + statuses.get(
            "CANCELED", 0) == len(set(payment_ids))
        # The payment's own posting (its id); refunds are postings of their own.
        unbalanced = (await conn.execute(text(
            "SELECT p.id FROM payments p LEFT JOIN ledger_entries e ON e.posting_id = p.id"
            " AND e.kind IN ('PAYMENT', 'CAPTURE')"
            " WHERE p.id = ANY(CAST(:ids AS uuid[]))"
            " GROUP BY p.id, p.status, p.amount_minor, p.captured_minor"
            " HAVING (p.status = 'SUCCEEDED' AND (count(e.id) <> 2 OR sum(e.amount_minor) <> 0"
            "          OR max(e.amount_minor) <> coalesce(p.captured_minor, p.amount_minor)))"
            "     OR (p.status IN ('FAILED', 'CANCELED') AND count(e.id) <> 0)"),
            {"ids": ids})).all()
        assert unbalanced == []
        negative = (await conn.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE account_id = ANY(CAST(:a AS uuid[]))"
            " AND balance_after_minor < 0"), {"a": [uuid.UUID(a) for a in accounts]})).scalar()
        assert negative == 0
        entries = dict((await conn.execute(text(
            "SELECT account_id::text, sum(amount_minor)::bigint FROM ledger_entries"
            " WHERE account_id = ANY(CAST(:a AS uuid[])) GROUP BY account_id"),
            {"a": [uuid.UUID(a) for a in accounts]})).all())
    final = await balances(services, accounts)
    assert sum(final.values()) == sum(opening.values()), "money was created or destroyed"
    assert min(final.values()) >= 0
    # Opening balances are entries too (FUNDING postings): each balance is its entries' sum.
    assert all(final[a] == entries.get(a, 0) for a in accounts)
    await assert_ledger_verified(services)
    return statuses


async def assert_ledger_verified(services: Any) -> None:
    """``paystream ledger verify`` over the whole database: every balance the sum of its
    entries, every posting summing to zero, no partner account negative, every SUCCEEDED
    payment its two entries, every FAILED none, every PENDING one something queued."""
    from paystream.services.ledger import verify_ledger

    report = await verify_ledger(services.db, services.settings)
    assert report.sound, {k: v for k, v in report.violations.items() if v}


async def assert_one_payment_per_key(services: Any, partner_name: str, keys: set[str]) -> None:
    async with services.db.primary.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT p.idempotency_key, count(*) FROM payments p JOIN partners t ON t.id = p.partner_id"
            " WHERE t.name = :n GROUP BY p.idempotency_key"), {"n": partner_name})).all()
    counts = dict(rows)
    assert set(counts) == keys, (len(counts), len(keys))
    assert set(counts.values()) == {1}


async def cache_disagreements(services: Any, cache: Any, accounts: list[str],
                              payment_ids: list[str]) -> list[str]:
    """Cache entries that differ from the primary (an absent entry is not one)."""
    async with services.db.primary.connect() as conn:
        payments = {str(r[0]): (r[1], r[2]) for r in (await conn.execute(text(
            "SELECT id, version, status FROM payments WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(p) for p in payment_ids]})).all()}
        account_rows = {str(r[0]): (r[1], r[2]) for r in (await conn.execute(text(
            "SELECT id, version, balance_minor FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(a) for a in accounts]})).all()}
    wrong = []
    for kind, truth, field in (("payment", payments, "status"), ("account", account_rows, "balance_minor")):
        ids = list(truth)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            values = await cache.redis.mget([f"{kind}:{i}" for i in chunk])
            for key, value in zip(chunk, values, strict=True):
                if value is None:
                    continue
                version, _, payload = value.partition(b"|")
                cached = json.loads(payload)
                if (int(version), cached[field]) != truth[key]:
                    wrong.append(f"{kind} {key}: cache {int(version)}/{cached[field]} "
                                 f"primary {truth[key][0]}/{truth[key][1]}")
    return wrong


async def assert_cache_agrees(services: Any, cache: Any, accounts: list[str],
                              payment_ids: list[str], timeout: float = 15.0) -> None:
    """The cache converges on the primary: writes kept during an outage are replayed within
    a few of the worker's polls. A stale entry that survives fails after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        wrong = await cache_disagreements(services, cache, accounts, payment_ids)
        if not wrong:
            return
        assert asyncio.get_running_loop().time() < deadline, wrong[:10]
        await asyncio.sleep(0.2)
