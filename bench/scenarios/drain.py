"""Scenario 4: one worker draining a backlog of 100,000 payments, against pgbench's
simple-update (fsync on) on the same primary in the same run; issue 16's target is twice
pgbench's rate with four clients.

The backlog is built directly (PENDING rows in one statement, the requests produced in
batches), so that building the backlog does not take longer than draining it. With
``BENCH_PROFILE_WORKER=1`` (and py-spy) the worker is sampled for the first 30 s of the drain
into ``bench/results/drain-profile.txt``."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from paystream.domain.entities import PaymentRow
from paystream.events.kafka import make_producer
from paystream.events.messages import PaymentRequested
from paystream.services.ledger import verify_ledger

from ..common import RESULTS
from ..drain import pgbench
from ..harness import LOGS, BenchContext, Row, Scenario, profile, progress, summarize_profile

_BACKLOG = text("""
INSERT INTO payments (id, partner_id, idempotency_key, request_hash, source_account_id,
  destination_account_id, amount_minor, currency, status, version, created_at, updated_at)
SELECT id, CAST(:partner AS uuid), key, hash, source, destination, amount, 'USD', 'PENDING', 1,
  :now, :now
FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS text[]), CAST(:hashes AS text[]),
            CAST(:sources AS uuid[]), CAST(:destinations AS uuid[]), CAST(:amounts AS bigint[]))
  AS t(id, key, hash, source, destination, amount)
""")


async def backlog(ctx: BenchContext, count: int, prefix: str) -> None:
    caller = await ctx.services.auth.caller_for(f"Bearer {ctx.key}")
    rng = random.Random(4)
    now = datetime.now(UTC)
    requests = []
    for i in range(count):
        source, destination = (uuid.UUID(a) for a in rng.sample(ctx.accounts[2:], 2))
        requests.append(PaymentRequested.of(PaymentRow(
            id=uuid.uuid4(), partner_id=caller.partner_id, idempotency_key=f"{prefix}-{i}",
            request_hash="x", source_account_id=source, destination_account_id=destination,
            amount_minor=rng.randint(1, 10_000), currency="USD", reference=None,
            status="PENDING", failure_reason=None, version=1, created_at=now, updated_at=now)))
    for chunk in range(0, count, 10_000):
        part = requests[chunk:chunk + 10_000]
        async with ctx.services.db.write_session() as session:
            await session.execute(_BACKLOG, {
                "partner": caller.partner_id, "now": now,
                "ids": [r.payment.id for r in part],
                "keys": [r.payment.idempotency_key for r in part],
                "hashes": [r.payment.request_hash for r in part],
                "sources": [r.payment.source_account_id for r in part],
                "destinations": [r.payment.destination_account_id for r in part],
                "amounts": [r.payment.amount_minor for r in part]})
    producer = make_producer(ctx.settings.kafka, linger_ms=20)
    await producer.start()
    try:
        topic = ctx.settings.kafka.requested_topic
        for chunk in range(0, count, 2_000):
            futures = [await producer.send(topic, r.encode(), key=str(r.source_account_id).encode())
                       for r in requests[chunk:chunk + 2_000]]
            for future in futures:
                await future
    finally:
        await producer.stop()


async def drained(ctx: BenchContext, prefix: str) -> float:
    async with ctx.services.db.primary.connect() as conn:
        first, last = (await conn.execute(text(
            "SELECT extract(epoch FROM min(updated_at)), extract(epoch FROM max(updated_at))"
            " FROM payments WHERE idempotency_key LIKE :prefix AND status <> 'PENDING'"),
            {"prefix": f"{prefix}-%"})).one()
    return float(last) - float(first)


async def run(ctx: BenchContext) -> Scenario:
    count = 5_000 if ctx.quick else 100_000
    prefix = f"drain-{uuid.uuid4().hex[:6]}"
    assert ctx.worker is not None
    ctx.worker.terminate()
    ctx.worker.wait()
    progress(f"  building a backlog of {count} payments (worker stopped)")
    await backlog(ctx, count, prefix)
    started = time.monotonic()
    ctx.worker = ctx.start_worker()
    folded = LOGS / "drain.folded"
    spy = profile("BENCH_PROFILE_WORKER", ctx.worker.pid, 30, folded)
    progress("  draining")
    await ctx.wait_drained(timeout=900)
    if spy is not None:
        spy.wait(60)
        if folded.exists():
            (RESULTS / "drain-profile.txt").write_text(summarize_profile(
                folded, "the worker draining the backlog (py-spy, 100 Hz)"))
    wall = time.monotonic() - started
    seconds = await drained(ctx, prefix)
    # The drain must leave a ledger that proves every balance (paystream ledger verify).
    report = await verify_ledger(ctx.services.db, ctx.settings)
    progress(f"  {report.summary()}")
    if not report.sound:
        raise AssertionError({k: v for k, v in report.violations.items() if v})
    per_second = count / seconds
    rows = [Row("4 worker drain", "payments committed/s", per_second, "payments/s")]
    data = {"payments": count, "seconds": seconds, "wall_seconds_incl_start": wall,
            "ledger_verify": report.summary()}
    if ctx.stack is not None:
        for clients in (1, 4):
            progress(f"  pgbench simple-update, {clients} client(s), fsync on")
            tps = pgbench(str(ctx.stack.bin_dir), ctx.settings.db.primary_url, clients, 10)
            data[f"pgbench_tps_{clients}"] = tps
            # The target is against four clients; one client's rate is shown for scale.
            factor = 2 if clients == 4 else None
            rows.append(Row("4 worker drain", f"payments/s vs pgbench -c {clients}", per_second,
                            "payments/s", tps, f"pgbench tps, {clients} client(s)",
                            f">= {factor}x pgbench" if factor else "",
                            per_second >= factor * tps if factor else None))
    return Scenario("drain", rows, data, [
        ("one worker process (one database connection, batches of up to "
        f"{ctx.settings.kafka.worker_batch_size}); drain time from the first to the last "
        "posted payment's updated_at")])
