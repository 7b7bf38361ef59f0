"""Worker drain rate: N payments queued, then one worker drains them; pgbench's simple-update
on the same primary, in the same run, is the baseline.

    python -m bench.drain [--payments 20000] [--accounts 200] [--clients 4]

``BENCH_PROFILE_WORKER=1`` (py-spy installed) samples the worker into
``bench/results/drain-profile.txt`` (collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlparse

from sqlalchemy import text

from paystream.db.migrate import upgrade_async
from paystream.events.kafka import ensure_topics
from paystream.services.admin import new_account, new_partner
from paystream.services.app import Services
from paystream.services.ledger import verify_ledger
from paystream.services.payments import CreatePayment

from .common import RESULTS, bench_stack, print_table, server_env, write_result


async def enqueue(services: Services, payments: int, accounts: int) -> list[str]:
    partner = f"bench-{uuid.uuid4().hex[:8]}"
    key = await new_partner(services.db, partner)
    ids = [str(await new_account(services.db, partner=partner, name=f"a{i}", currency="USD",
                                 balance="1000000.00")) for i in range(accounts)]
    caller = await services.auth.caller_for(f"Bearer {key}")
    rng = random.Random(1)
    semaphore = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        source, destination = rng.sample(ids, 2)
        cents = rng.randint(1, 10000)
        async with semaphore:
            await services.payments.create(caller, CreatePayment(
                idempotency_key=f"drain-{i}", source_account_id=source,
                destination_account_id=destination, amount=f"{cents // 100}.{cents % 100:02d}",
                currency="USD"))

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(payments)))
    print(f"enqueued {payments} payments in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return ids


async def drain(settings, env: dict[str, str], payments: int) -> dict[str, float]:
    worker = subprocess.Popen([sys.executable, "-m", "paystream.cli", "worker"], env=env,  # noqa: ASYNC220 (a fork, once)
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profiler = None
    if os.environ.get("BENCH_PROFILE_WORKER"):  # py-spy samples the worker while it drains
        profiler = subprocess.Popen(["py-spy", "record", "--format", "raw", "--rate", "200",  # noqa: ASYNC220 (a fork, once)
                                     "--pid", str(worker.pid), "-o",
                                     str(RESULTS / "drain-profile.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    services = Services.create(settings)
    try:
        while True:
            async with services.db.primary.connect() as conn:
                pending = (await conn.execute(
                    text("SELECT count(*) FROM payments WHERE status = 'PENDING'"))).scalar()
            if pending == 0:
                break
            await asyncio.sleep(0.5)
        async with services.db.primary.connect() as conn:
            first, last = (await conn.execute(text(
                "SELECT extract(epoch FROM min(updated_at)), extract(epoch FROM max(updated_at))"
                " FROM payments WHERE status <> 'PENDING'"))).one()
        report = await verify_ledger(services.db, settings)  # paystream ledger verify
        print(report.summary())
        if not report.sound:
            raise SystemExit(f"ledger verify failed: {report.violations}")
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait()
        worker.terminate()
        worker.wait()
        await services.close()
    seconds = float(last) - float(first)
    return {"payments": payments, "seconds": seconds, "per_second": payments / seconds}


def pgbench(bin_dir: str, primary_url: str, clients: int, seconds: int) -> float:
    url = urlparse(primary_url.replace("+asyncpg", ""))
    base = [f"{bin_dir}/pgbench", "-h", url.hostname or "127.0.0.1", "-p", str(url.port),
            "-U", url.username or "postgres"]
    subprocess.run([f"{bin_dir}/createdb", "-h", url.hostname or "", "-p", str(url.port),
                    "-U", url.username or "postgres", "pgbench"], check=False, capture_output=True)
    subprocess.run([*base, "-i", "-s", "1", "-q", "pgbench"], check=True, capture_output=True)
    done = subprocess.run([*base, "-b", "simple-update", "-c", str(clients), "-j", str(clients),
                           "-T", str(seconds), "pgbench"], check=True, capture_output=True, text=True)
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    assert match, done.stdout
    return float(match.group(1))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with bench_stack() as (settings, stack):
        await upgrade_async(settings.db.primary_url)
        await ensure_topics(settings.kafka)
        services = Services.create(settings)
        await services.start(follow_status=False)
        try:
            await enqueue(services, args.payments, args.accounts)
        finally:
            await services.close()
        result = await drain(settings, server_env(settings), args.payments)
        tps = None
        if stack is not None:
            tps = pgbench(str(stack.bin_dir), settings.db.primary_url, args.clients, 10)  # type: ignore[attr-defined]
    rows = [("payments drained", str(result["payments"])),
            ("drain time", f"{result['seconds']:.2f} s"),
            ("worker payments/s", f"{result['per_second']:.0f}")]
    if tps:
        rows += [(f"pgbench simple-update tps ({args.clients} clients)", f"{tps:.0f}"),
                 ("ratio worker / pgbench", f"{result['per_second'] / tps:.2f}")]
    print_table("worker drain (one worker process, fsync on)", rows)
    path = write_result("drain", {**result, "pgbench_tps": tps, "pgbench_clients": args.clients})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
