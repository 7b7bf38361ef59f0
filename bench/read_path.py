"""Read path of the nested query of issue 4: an account's 50 latest payments, each with both
accounts. Counts, per request, the SQL statements and Redis commands cold (nothing of it in
Redis) and warm, and the cache hit ratio of the entity loads over N warm requests.

    python -m bench.read_path [--requests 200] [--payments 50]

The API runs in this process (Starlette app over httpx's ASGI transport), so the counters of
its cache and reader are the ones measured. The payments are inserted directly and the
replica has replayed them before the first request: this measures reads, not the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event, text

from paystream.db.migrate import upgrade_async
from paystream.events.kafka import ensure_topics
from paystream.gateway.app import create_app
from paystream.services.admin import new_account, new_partner
from paystream.services.app import Services

from .common import bench_stack, print_table, write_result

QUERY = """query($a: ID!, $first: Int) { payments(accountId: $a, first: $first) {
  edges { node { id status amount currency
    sourceAccount { id name currency balance } destinationAccount { id name currency balance } } }
  pageInfo { hasNextPage endCursor } } }"""


class Counters:
    """SQL statements (split: authentication vs the query's own) and Redis commands."""

    def __init__(self) -> None:
        self.sql = 0
        self.auth_sql = 0
        self.redis: list[str] = []

    def reset(self) -> None:
        self.sql = self.auth_sql = 0
        self.redis.clear()


@contextmanager
def counting(services: Services) -> Iterator[Counters]:
    counters = Counters()

    def on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "api_keys" in statement:
            counters.auth_sql += 1
        else:
            counters.sql += 1

    db = services.db
    engines = [db.primary, db._primary_reader, *db.replicas]
    redis = services.cache.redis
    original = redis.execute_command

    async def execute_command(*args: Any, **kwargs: Any) -> Any:
        counters.redis.append(str(args[0]).upper())
        return await original(*args, **kwargs)

    for engine in engines:
        event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
    redis.execute_command = execute_command  # type: ignore[method-assign]
    try:
        yield counters
    finally:
        redis.execute_command = original  # type: ignore[method-assign]
        for engine in engines:
            event.remove(engine.sync_engine, "before_cursor_execute", on_statement)


async def seed(services: Services, payments: int) -> tuple[str, str, list[str]]:
    """A partner, an account with ``payments`` payments to five others; returns the key, the
    account and every account id involved."""
    partner = f"bench-read-{uuid.uuid4().hex[:8]}"
    key = await new_partner(services.db, partner)
    source = await new_account(services.db, partner=partner, name="main", currency="USD",
                               balance="1000.00")
    others = [await new_account(services.db, partner=partner, name=f"o{i}", currency="USD",
                                balance="0") for i in range(5)]
    async with services.db.write_session() as session:
        partner_id = (await session.execute(
            text("SELECT partner_id FROM accounts WHERE id = :a"), {"a": source})).scalar()
        for i in range(payments):
            payment_id = uuid.uuid4()
            await session.execute(text(
                "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
                " source_account_id, destination_account_id, amount_minor, currency, status,"
                " created_at) VALUES (:id, :p, :k, repeat('a', 64), :s, :d, :amt, 'USD',"
                " 'SUCCEEDED', now() - make_interval(secs => :age))"),
                {"id": payment_id, "p": partner_id, "k": str(payment_id), "s": source,
                 "d": others[i % 5], "amt": 100 + i, "age": payments - i})
    await wait_for_replicas(services)
    return key, str(source), [str(source), *map(str, others)]


async def wait_for_replicas(services: Services, timeout: float = 10.0) -> None:
    async with services.db.primary.connect() as conn:
        lsn = (await conn.execute(text("SELECT pg_current_wal_insert_lsn()::text"))).scalar()
    deadline = time.monotonic() + timeout
    for engine in services.db.replicas:
        while True:
            async with engine.connect() as conn:
                done = (await conn.execute(text(
                    "SELECT pg_last_wal_replay_lsn() >= CAST(CAST(:lsn AS text) AS pg_lsn)"),
                    {"lsn": lsn})).scalar()
            if done:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("replica did not replay the seed")
            await asyncio.sleep(0.01)


async def measure(services: Services, requests: int, payments: int) -> dict[str, Any]:
    key, account, accounts = await seed(services, payments)
    app = create_app(services.settings, services)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"query": QUERY, "variables": {"a": account, "first": payments}}
    cache, reader = services.cache, services.reader

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://bench") as client:

        async def ask() -> float:
            started = time.perf_counter()
            response = await client.post("/graphql", json=body, headers=headers)
            elapsed = time.perf_counter() - started
            data = response.json()
            assert "errors" not in data, data
            assert len(data["data"]["payments"]["edges"]) == payments
            return elapsed

        # Warm the process (connections, the Lua script, Strawberry's parse cache) on other
        # data, so "cold" below means cold data, not a process's first request.
        warmup_key, warmup_account, _ = await seed(services, 1)
        response = await client.post(
            "/graphql", json={"query": QUERY, "variables": {"a": warmup_account, "first": 1}},
            headers={"Authorization": f"Bearer {warmup_key}"})
        assert "errors" not in response.json(), response.text

        # Cold: none of the query's entities in Redis.
        await cache.delete(*[f"account:{a}" for a in accounts])
        with counting(services) as counters:
            cold_s = await ask()
            cold = (counters.sql, counters.auth_sql, list(counters.redis))
            counters.reset()
            # One warm-up request has run (the cold one); every later request is warm.
            hits0, misses0, reads0 = cache.hits, cache.misses, reader.db_reads
            latencies = []
            for _ in range(requests):
                latencies.append(await ask())
            warm = (counters.sql / requests, counters.auth_sql / requests,
                    len(counters.redis) / requests, counters.redis[: len(counters.redis) // requests])
    hits, misses = cache.hits - hits0, cache.misses - misses0
    latencies.sort()
    return {
        "payments_per_page": payments,
        "warm_requests": requests,
        "cold": {"sql_statements": cold[0], "auth_sql_statements": cold[1],
                 "redis_commands": len(cold[2]), "redis_command_names": cold[2],
                 "latency_ms": round(cold_s * 1000, 2)},
        "warm": {"sql_statements_per_request": warm[0], "auth_sql_statements_per_request": warm[1],
                 "redis_commands_per_request": warm[2], "redis_command_names": warm[3],
                 "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
                 "latency_ms_p95": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2)},
        "cache": {"entity_hits": hits, "entity_misses": misses,
                  "hit_ratio": hits / (hits + misses) if hits + misses else None,
                  "entity_db_reads": reader.db_reads - reads0},
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200, help="warm requests measured")
    parser.add_argument("--payments", type=int, default=50, help="payments on the page")
    args = parser.parse_args()
    with bench_stack() as (settings, _stack):
        await upgrade_async(settings.db.primary_url)
        await ensure_topics(settings.kafka)
        services = Services.create(settings)
        try:
            result = await measure(services, args.requests, args.payments)
        finally:
            await services.close()
    cold, warm, cache = result["cold"], result["warm"], result["cache"]
    print_table(
        f"nested query: {args.payments} payments with both accounts (per request)",
        [("SQL statements, cold", f"{cold['sql_statements']} (+{cold['auth_sql_statements']} auth)"),
         ("SQL statements, warm", (f"{warm['sql_statements_per_request']:g}"
                                  f" (+{warm['auth_sql_statements_per_request']:g} auth)")),
         ("Redis commands, cold", f"{cold['redis_commands']}  {' '.join(cold['redis_command_names'])}"),
         ("Redis commands, warm", (f"{warm['redis_commands_per_request']:g}"
                                  f"  {' '.join(warm['redis_command_names'])}")),
         (f"entity cache hit ratio, {args.requests} warm requests",
          f"{cache['hit_ratio']:.3f} ({cache['entity_hits']} hits, {cache['entity_misses']} misses)"),
         ("entity batches read from the database, warm", str(cache["entity_db_reads"])),
         ("latency cold / warm p50 / warm p95",
          f"{cold['latency_ms']:.1f} / {warm['latency_ms_p50']:.1f} / {warm['latency_ms_p95']:.1f} ms")],
    )
    path = write_result("read_path", result)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
