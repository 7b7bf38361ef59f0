"""Scenario 8: payments accepted a second through createPayments, 1,000 per request, against
single createPayment accepted a second on the same API process in the same run (scenario 3's
load: wrk, 32 connections). Issue 16's target: at least 10x.

With ``BENCH_PROFILE_API=1`` (and py-spy) the API is sampled during the bulk phase into
``bench/results/bulk-profile.txt``.

The bulk load generator (``bench.loadgen.bulk``, one separate process) keeps 4 requests in
flight, each of 1,000 inputs with fresh idempotency keys and sources in rotation; accepted
means committed: the figure is the database's count of new payments over the phase, as in
scenario 3. The worker posts them meanwhile, and the backlog is drained before the next phase.
"""

from __future__ import annotations

from ..common import RESULTS
from ..harness import LOGS, BenchContext, Row, Scenario, profile, progress, summarize_profile
from ..loadgen import run as run_loadgen
from .create_payment import measure as measure_single
from .create_payment import payments_count

NAME = "8 createPayments (bulk)"
BATCH = 1000
CONNECTIONS = 4
TARGET_RATIO = 10.0


async def run(ctx: BenchContext) -> Scenario:
    api = await ctx.start_api()
    try:
        single, single_accepted = await measure_single(ctx, api)
        progress(f"  {api.name}: createPayments of {BATCH}, {CONNECTIONS} in flight, "
                 f"{ctx.seconds:.0f} s")
        before = await payments_count(ctx)
        # BENCH_PROFILE_API=1 (and py-spy): the API sampled during the bulk phase.
        folded = LOGS / "bulk.folded"
        spy = profile("BENCH_PROFILE_API", api.process.pid, ctx.seconds, folded)
        bulk = await run_loadgen(
            "bulk", "bulk", "--url", api.url, "--key", ctx.key,
            "--sources", ",".join(ctx.accounts[2:]), "--destination", ctx.accounts[1],
            "--batch", BATCH, "--connections", CONNECTIONS, "--seconds", ctx.seconds,
            env=ctx.env, timeout=ctx.seconds + 300)
        accepted = await payments_count(ctx) - before
        if spy is not None:
            spy.wait(60)
            if folded.exists():
                (RESULTS / "bulk-profile.txt").write_text(summarize_profile(
                    folded, "the API under createPayments of 1,000 (py-spy, 100 Hz)"))
        # A phase of bulk acceptance is a large backlog: allow the worker 100 payments/s.
        await ctx.wait_drained(timeout=max(300.0, accepted / 100))
    finally:
        api.stop()
    single_rate = single_accepted / ctx.seconds
    bulk_rate = accepted / bulk["seconds"] if bulk["seconds"] else 0.0
    return Scenario("bulk_payments", [
        Row(NAME, "accepted/s", bulk_rate, "payments/s", single_rate,
            "createPayment accepted/s", f">= {TARGET_RATIO:.0f}x",
            bool(single_rate) and bulk_rate >= TARGET_RATIO * single_rate),
        Row(NAME, "p50 request latency", bulk["p50_ms"], "ms"),
        Row(NAME, "p99 request latency", bulk["p99_ms"], "ms"),
    ], {"bulk": bulk, "accepted": accepted, "single": single.as_dict(),
        "single_accepted": single_accepted},
        [(f"bench.loadgen.bulk: 1 process, {CONNECTIONS} requests in flight, {BATCH} inputs "
          "each, fresh idempotency keys, 48 source accounts in rotation; the baseline is "
          "createPayment through wrk at 32 connections on the same API process; the worker "
          "runs meanwhile")])
