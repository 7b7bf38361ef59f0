"""Inquiry on a busy account (issue 19): a statement page of 100 entries, balanceAt, and
filtered payment pages, each against the unfiltered payments page of the same account in the
same run (target: within 2x of it), with the plan of each statement.

    python -m bench.inquiry [--payments 100000] [--requests 30]
    python -m bench.inquiry --payments 1000000      # the issue's size; seeding takes minutes

The account has about 0.95 entries per payment (every 20th payment FAILED, posting nothing);
every 100th payment carries metadata ``campaign=spring``. The API runs in this process (the
Starlette app over httpx's ASGI transport, reads on the replica as in production), requests
are sequential and interleaved (one of each case per round), and the plans are ``EXPLAIN (ANALYZE, BUFFERS)`` of the exact statements the
requests sent, with their parameters, on the replica.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import event, text

from paystream.db.migrate import upgrade_async
from paystream.events.kafka import ensure_topics
from paystream.gateway.app import create_app
from paystream.services.admin import new_account, new_partner
from paystream.services.app import Services

from .common import bench_stack, print_table, write_result
from .read_path import wait_for_replicas

COUNTERPARTIES = 10
OPENING_MINOR = 10**14  # enough that no seeded payment fails for funds

# Every seeded payment alternates direction; every 20th failed; every 100th has metadata.
_SEED_PAYMENTS = """
INSERT INTO payments (id, partner_id, idempotency_key, request_hash, source_account_id,
                      destination_account_id, amount_minor, currency, reference, status,
                      failure_reason, created_at, updated_at, metadata_entries)
SELECT gen_random_uuid(), :partner, 'bench-' || i, repeat('a', 64),
       CASE WHEN i % 2 = 0 THEN CAST(:main AS uuid) ELSE (CAST(:others AS uuid[]))[1 + i % :n] END,
       CASE WHEN i % 2 = 0 THEN (CAST(:others AS uuid[]))[1 + i % :n] ELSE CAST(:main AS uuid) END,
       100 + i % 1000, 'USD', 'order-' || i,
       CASE WHEN i % 20 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END,
       CASE WHEN i % 20 = 0 THEN 'INSUFFICIENT_FUNDS' END,
       CAST(:start AS timestamptz) + make_interval(secs => i / 1000.0),
       CAST(:start AS timestamptz) + make_interval(secs => i / 1000.0),
       CASE WHEN i % 100 = 0 THEN '[{"key": "campaign", "value": "spring"}]'::jsonb
            ELSE '[]'::jsonb END
  FROM generate_series(1, CAST(:count AS integer)) AS i
"""
# The metadata filter's index, as insert_pending writes it: each entry for both accounts.
_SEED_METADATA = """
INSERT INTO payment_metadata (account_id, payment_id, key, value, created_at)
SELECT a.account_id, p.id, e->>'key', e->>'value', p.created_at
  FROM payments p CROSS JOIN LATERAL jsonb_array_elements(p.metadata_entries) e
       CROSS JOIN LATERAL (VALUES (p.source_account_id), (p.destination_account_id)) a(account_id)
 WHERE p.partner_id = :partner AND p.metadata_entries <> '[]'
"""
# Both legs of every SUCCEEDED payment, balances as running sums after the opening funding.
_SEED_ENTRIES = """
INSERT INTO ledger_entries (posting_id, kind, payment_id, account_id, amount_minor,
                            balance_after_minor, created_at)
SELECT id, 'PAYMENT', id, account_id, amount,
       CAST(:opening AS bigint) + sum(amount) OVER (PARTITION BY account_id ORDER BY created_at, id), created_at
  FROM (SELECT id, source_account_id AS account_id, -amount_minor AS amount, created_at
          FROM payments WHERE partner_id = :partner AND status = 'SUCCEEDED'
        UNION ALL
        SELECT id, destination_account_id, amount_minor, created_at
          FROM payments WHERE partner_id = :partner AND status = 'SUCCEEDED') legs
 ORDER BY created_at, id
"""
_SET_BALANCES = """
UPDATE accounts a SET balance_minor = CAST(:opening AS bigint) + e.total, version = a.version + 1
  FROM (SELECT account_id, sum(amount_minor) AS total FROM ledger_entries
         WHERE kind = 'PAYMENT' AND account_id = ANY(CAST(:accounts AS uuid[])) GROUP BY account_id) e
 WHERE a.id = e.account_id
"""

STATEMENT = """query($id: ID!, $after: String) { account(id: $id) {
  entries(first: 100, after: $after) { edges { cursor node { id kind amount balanceAfter createdAt } }
  pageInfo { endCursor } } } }"""
BALANCE_AT = """query($id: ID!, $at: DateTime!) { account(id: $id) { balanceAt(at: $at) } }"""
PAGE = """query($id: ID!, $filter: PaymentFilter) { payments(accountId: $id, first: 100,
  filter: $filter) { edges { cursor node { id status amount reference } } } }"""


async def seed(services: Services, payments: int) -> dict[str, Any]:
    partner = f"bench-inquiry-{uuid.uuid4().hex[:8]}"
    key = await new_partner(services.db, partner)
    opening = f"{OPENING_MINOR // 100}.00"
    main = await new_account(services.db, partner=partner, name="main", currency="USD",
                             balance=opening)
    others = [await new_account(services.db, partner=partner, name=f"o{i}", currency="USD",
                                balance=opening) for i in range(COUNTERPARTIES)]
    started = time.monotonic()
    async with services.db.write_session() as session:
        await session.execute(text("SET LOCAL statement_timeout = 0"))  # a bulk seed
        partner_id, start = (await session.execute(text(
            "SELECT partner_id, clock_timestamp() FROM accounts WHERE id = :a"),
            {"a": main})).one()
        await session.execute(text(_SEED_PAYMENTS), {
            "partner": partner_id, "main": main, "others": others, "n": COUNTERPARTIES,
            "start": start, "count": payments})
        await session.execute(text(_SEED_METADATA), {"partner": partner_id})
        # Deferred per-row triggers check each posting at commit; fine for a seed.
        await session.execute(text(_SEED_ENTRIES), {"partner": partner_id,
                                                    "opening": OPENING_MINOR})
        await session.execute(text(_SET_BALANCES), {"opening": OPENING_MINOR,
                                                    "accounts": [main, *others]})
    async with services.db.primary.connect() as conn:
        await conn.execute(text("ANALYZE payments"))
        await conn.execute(text("ANALYZE ledger_entries"))
        await conn.execute(text("ANALYZE payment_metadata"))
        await conn.commit()
        entries = (await conn.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE account_id = :a"), {"a": main})).scalar()
        middle = (await conn.execute(text(
            "SELECT created_at FROM payments WHERE idempotency_key = :k"),
            {"k": f"bench-{payments // 2}"})).scalar()
    await wait_for_replicas(services, timeout=600)
    return {"key": key, "account": str(main), "payments": payments, "entries": int(entries or 0), "middle": middle,
            "seed_s": time.monotonic() - started}


@contextmanager
def capture(services: Services) -> Iterator[list[tuple[str, Any]]]:
    """The statements the requests send to the replicas, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def on_statement(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    engines = [e.sync_engine for e in services.db.replicas] or [services.db.primary.sync_engine]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", on_statement)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", on_statement)


async def measure(services: Services, seeded: dict[str, Any], requests: int) -> dict[str, Any]:
    app = create_app(services.settings, services)
    account, middle = seeded["account"], seeded["middle"]
    # About 1,000 payments (one per seeded millisecond); the page takes the newest 100.
    window = {"createdFrom": middle.isoformat(),
              "createdTo": (middle + timedelta(seconds=1)).isoformat()}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("payments page, unfiltered", PAGE, {"id": account}),
        ("statement page (100 entries)", STATEMENT, {"id": account}),
        ("balanceAt (middle of the history)", BALANCE_AT, {"id": account,
                                                           "at": middle.isoformat()}),
        ("payments filter status=FAILED", PAGE, {"id": account, "filter": {"status": "FAILED"}}),
        ("payments filter direction=INCOMING", PAGE, {"id": account,
                                                      "filter": {"direction": "INCOMING"}}),
        ("payments filter createdFrom/To (1 s window)", PAGE, {"id": account,
                                                                 "filter": window}),
        ("payments filter reference (1 match)", PAGE, {
            "id": account, "filter": {"reference": f"order-{seeded['payments'] // 3}"}}),
        ("payments filter metadata campaign=spring", PAGE, {"id": account, "filter": {
            "metadataKey": "campaign", "metadataValue": "spring"}}),
        ("payments filter metadataKey, no match", PAGE, {"id": account, "filter": {
            "metadataKey": "absent"}}),
        ("payments filter FAILED + OUTGOING", PAGE, {"id": account, "filter": {
            "status": "FAILED", "direction": "OUTGOING"}}),
    ]
    results: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {seeded['key']}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://bench") as http:
        async def ask(query: str, variables: dict[str, Any]) -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            response = await http.post("/graphql", json={"query": query, "variables": variables},
                                       headers=headers)
            elapsed = (time.perf_counter() - started) * 1000
            body = response.json()
            assert "errors" not in body, body
            return elapsed, body

        plans: dict[str, tuple[str, str, int]] = {}
        for name, query, variables in cases:
            await ask(query, variables)  # warm: the account in the cache, plans prepared
            with capture(services) as seen:
                _, body = await ask(query, variables)
            statement = max(seen, key=lambda s: len(s[0]))  # the page, not the version probe
            plans[name] = (statement[0], await _plan(services, statement), _rows(body))
        # Interleaved rounds, so that drift on the shared machine hits every case alike.
        latencies: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(requests):
            for name, query, variables in cases:
                latencies[name].append((await ask(query, variables))[0])
        for name, timings in latencies.items():
            sql, plan, rows = plans[name]
            results[name] = {
                "p50_ms": statistics.median(timings),
                "p95_ms": sorted(timings)[int(0.95 * (len(timings) - 1))],
                "rows": rows, "sql": sql, "plan": plan,
            }
    return results


def _rows(body: dict[str, Any]) -> int:
    data = body["data"]
    if "payments" in data:
        return len(data["payments"]["edges"])
    account = data["account"]
    return len(account["entries"]["edges"]) if "entries" in account else 1


async def _plan(services: Services, statement: tuple[str, Any]) -> str:
    sql, parameters = statement
    engine = services.db.replicas[0] if services.db.replicas else services.db.primary
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}",
                                          tuple(parameters))
        return "\n".join(str(r[0]) for r in rows)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inquiry")
    parser.add_argument("--payments", type=int, default=100_000,
                        help="payments on the account (1,000,000 for the issue's size)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per case")
    args = parser.parse_args()
    with bench_stack() as (settings, _stack):
        await upgrade_async(settings.db.primary_url)
        await ensure_topics(settings.kafka)
        services = Services.create(settings)
        try:
            seeded = await seed(services, args.payments)
            results = await measure(services, seeded, args.requests)
        finally:
            await services.close()
    base = results["payments page, unfiltered"]["p50_ms"]
    rows = [(name, (f"p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
                    f"{r['p50_ms'] / base:5.2f}x unfiltered  ({r['rows']} rows)"))
            for name, r in results.items()]
    print_table(f"inquiry: {seeded['entries']:,} entries on the account "
                f"({args.payments:,} payments, seeded in {seeded['seed_s']:.0f} s)", rows)
    for name, r in results.items():
        print(f"\n-- {name}\n{r['plan']}")
    path = write_result("inquiry", {
        "payments": args.payments, "entries": seeded["entries"], "requests": args.requests,
        "cases": {n: {**r, "ratio_to_unfiltered": r["p50_ms"] / base}
                  for n, r in results.items()}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
