"""Scenario 6: 1k, 5k and 10k open subscriptions on one API process.

For each size, a fresh API process (``ctx.start_api()``) and load-generator processes
(``bench.loadgen.subscribers``: 1 up to 5k subscriptions, 2 above; 10 subscriptions per
websocket) that subscribe to ``accountActivity`` of one account. Warm-up payments go out
until every subscription has received one, so each is known to be live; then:

- memory per subscription: the API process's RSS with them open, minus its RSS before any
  was opened (after a small warm-up round), divided by their number;
- delivery: from just before a createPayment to the last subscriber reading its SUCCEEDED
  update (the median of three payments). The baseline is the same delivery to 10
  subscribers on the same API process, measured just before, so the ratio is what fanning
  out to all of them costs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

from paystream.client import PaystreamClient

from ..harness import BenchContext, Row, Scenario, Server, progress
from ..loadgen import LineProcess

NAME = "subscription_capacity"
LABEL = "6 subscription capacity"  # as the summary table names it
SIZES = [1_000, 5_000, 10_000]
QUICK_SIZES = [200, 1_000]
PER_CONNECTION = 10
PER_CLIENT = 5_000  # subscriptions one load-generator process drives
MEASURED_EVENTS = 3
FEW = 10  # subscribers of the baseline delivery
TARGET_KB, TARGET_MS, TARGET_SIZE = 30.0, 1000.0, 10_000  # issue 16 (was 100 KB)


async def open_clients(ctx: BenchContext, server: Server, account: str, n: int
                       ) -> tuple[list[LineProcess], list[dict[str, float]]]:
    processes = -(-n // PER_CLIENT)
    clients = [await LineProcess.start(
        f"subscribers-{n}-{i}", "subscribers", "--url", server.url, "--key", ctx.key,
        "--account", account, "--subscriptions", n // processes + (i < n % processes),
        "--per-connection", PER_CONNECTION, env=ctx.env) for i in range(processes)]
    opened = [await client.read(timeout=600) for client in clients]
    return clients, opened


async def deliver(api: PaystreamClient, clients: list[LineProcess], source: str,
                  destination: str, label: str, timeout: float) -> dict[str, float | int | None]:
    """One payment; when its PENDING and SUCCEEDED reached the first and the last subscriber."""
    reference = f"cap-{label}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    await api.create_payment(idempotency_key=reference, source_account_id=source,
                             destination_account_id=destination, amount="0.01", currency="USD",
                             reference=reference)
    answers = await asyncio.gather(*(c.ask({"cmd": "wait", "reference": reference,
                                            "timeout": timeout}, timeout=timeout + 30)
                                     for c in clients))
    result: dict[str, float | int | None] = {}
    for status in ("pending", "succeeded"):
        seen = [a[status] for a in answers if a[status]["received"]]
        result[f"{status}_received"] = sum(a[status]["received"] for a in answers)
        result[f"{status}_first_ms"] = (min(s["first"] for s in seen) - started) * 1000 \
            if seen else None
        result[f"{status}_last_ms"] = (max(s["last"] for s in seen) - started) * 1000 \
            if seen else None
    return result


async def measure(ctx: BenchContext, n: int, source: str, destination: str
                  ) -> dict[str, object]:
    server = await ctx.start_api()
    clients: list[LineProcess] = []
    try:
        async with PaystreamClient(server.url, ctx.key, timeout=30) as api:
            # First-use costs (imports, caches, pools) are not the subscriptions' memory.
            # The same delivery to a few subscribers is the baseline.
            warm, _ = await open_clients(ctx, server, source, FEW)
            few = [await deliver(api, warm, source, destination, f"few{i}", 10)
                   for i in range(MEASURED_EVENTS + 1)][1:]
            for client in warm:
                await client.close()
            await asyncio.sleep(1)
            rss_before = server.rss_bytes()
            clients, opened = await open_clients(ctx, server, source, n)
            open_s = max(o["open_s"] for o in opened)
            progress(f"  {n} subscriptions open in {open_s:.1f} s; confirming them live")
            live = 0
            timeout = 30 + n / 100  # generous: a miss shows as a count, not a hang
            for attempt in range(6):
                await deliver(api, clients, source, destination, f"live{attempt}", timeout)
                live = 0
                for client in clients:
                    live += (await client.ask({"cmd": "live"}, timeout=30))["live"]
                if live == n:
                    break
            await asyncio.sleep(1)
            rss_after = server.rss_bytes()
            events = [await deliver(api, clients, source, destination, f"m{i}", timeout)
                      for i in range(MEASURED_EVENTS)]
    finally:
        for client in clients:
            await client.close()
        server.stop()
    return {"subscriptions": n, "live": live, "connections": n // PER_CONNECTION,
            "client_processes": len(clients), "open_s": open_s,
            "rss_before": rss_before, "rss_after": rss_after,
            "bytes_per_subscription": (rss_after - rss_before) / n, "events": events,
            "few": few}


async def run(ctx: BenchContext) -> Scenario:
    # Accounts apart from the latency scenario's and the nested list's.
    source, destination = ctx.accounts[-1], ctx.accounts[-2]
    levels = []
    for n in QUICK_SIZES if ctx.quick else SIZES:
        progress(f"  {n} subscriptions")
        levels.append(await measure(ctx, n, source, destination))
    await ctx.wait_drained()
    rows, notes = [], []
    for level in levels:
        n = int(level["subscriptions"])  # type: ignore[call-overload]
        events = level["events"]
        assert isinstance(events, list)
        seen = [e["succeeded_last_ms"] for e in events if e["succeeded_last_ms"] is not None]
        complete = all(e["succeeded_received"] == n for e in events)
        last = statistics.median(seen) if seen else float("nan")
        few = statistics.median(e["succeeded_last_ms"] for e in level["few"]  # type: ignore[union-attr]
                                if e["succeeded_last_ms"] is not None)
        kb = float(level["bytes_per_subscription"]) / 1024  # type: ignore[arg-type]
        at_target = n == TARGET_SIZE
        rows.append(Row(LABEL, f"memory per subscription, {n:,} open", kb, "KB",
                        target=f"<= {TARGET_KB:.0f} KB at 10k" if at_target else "",
                        met=kb <= TARGET_KB if at_target else None))
        rows.append(Row(LABEL, f"createPayment -> SUCCEEDED at all {n:,} subscribers", last, "ms",
                        few, f"{FEW} subscribers, same API process",
                        target=f"<= {TARGET_MS:.0f} ms at 10k" if at_target else "",
                        met=complete and last <= TARGET_MS if at_target else None))
        notes.append(
            f"{n:,}: {level['connections']} websocket connections ({PER_CONNECTION} "
            f"subscriptions each) from {level['client_processes']} load-generator process(es) "
            f"(bench.loadgen.subscribers), opened in {level['open_s']:.1f} s, "
            f"{level['live']} confirmed live; API RSS {level['rss_before'] / 2**20:.0f} -> "
            f"{level['rss_after'] / 2**20:.0f} MiB; SUCCEEDED to last subscriber per event "
            + ", ".join(f"{_ms(e['succeeded_last_ms'])} ({e['succeeded_received']} got it)"
                        for e in events)
            + "; PENDING (published by the API, no worker) to last: "
            + ", ".join(_ms(e["pending_last_ms"]) for e in events)
            + f"; to {FEW} subscribers before: "
            + ", ".join(_ms(e["succeeded_last_ms"]) for e in level["few"]))  # type: ignore[union-attr]
    return Scenario(NAME, rows, data={"levels": levels, "per_connection": PER_CONNECTION},
                    notes=notes)


def _ms(value: object) -> str:
    return f"{value:.0f} ms" if isinstance(value, float) else "none"
