"""All benchmarks in one run: ``python -m bench`` (or ``paystream bench``).

Starts the embedded stack with fsync on (or uses the servers PAYSTREAM_* names), seeds data,
runs each scenario with its baseline in the same run, prints the table, writes
``bench/results/<scenario>.json`` and ``bench/results/summary.json``, the plots under
``docs/``, and the tables of ``docs/benchmarks.md``.

    python -m bench [--only cached_query,nested_list] [--seconds 20] [--quick]

With ``--only`` the page's table and plots are rebuilt from every scenario's latest saved run
(``python -m bench.report`` does the same by itself), so a partial run keeps the others' rows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time

from paystream.db.migrate import upgrade_async
from paystream.events.kafka import ensure_topics
from paystream.progress import progress as bar
from paystream.services.app import Services

from .common import bench_stack, server_env, write_result
from .harness import BenchContext, Scenario, progress, seed

SCENARIOS = [
    "cached_query", "nested_list", "create_payment", "drain", "subscribe_latency",
    "subscription_capacity", "scaling", "bulk_payments", "webhooks",
]


def table(scenarios: list[Scenario]) -> str:
    """The summary as a Markdown table (printed, and written into docs/benchmarks.md)."""
    lines = ["| scenario | metric | value | baseline (same run) | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    for scenario in scenarios:
        for row in scenario.rows:
            baseline = f"{row.baseline:,.2f} ({row.baseline_name})" if row.baseline else ""
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[row.met]
            lines.append(f"| {row.scenario} | {row.metric} | {row.value:,.2f} {row.unit} | "
                         f"{baseline} | {ratio} | {row.target} | {met} |")
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", default="", help="comma-separated scenarios")
    parser.add_argument("--seconds", type=float, default=20.0, help="per load phase")
    parser.add_argument("--quick", action="store_true", help="short phases, small sizes")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or SCENARIOS
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    results: list[Scenario] = []
    with bench_stack() as (settings, stack):
        progress("stack up; migrating")
        await upgrade_async(settings.db.primary_url)
        await ensure_topics(settings.kafka)
        services = Services.create(settings)
        await services.start(follow_status=False)
        ctx = BenchContext(settings=settings, stack=stack, env=server_env(settings),
                           services=services, seconds=5.0 if args.quick else args.seconds,
                           quick=args.quick)
        ctx.worker = ctx.start_worker()
        try:
            progress("seeding")
            await seed(ctx)
            # A bar on a terminal; piped or logged, the timestamped lines alone.
            for name in bar(chosen, "scenarios"):
                progress(f"scenario {name}")
                module = importlib.import_module(f"bench.scenarios.{name}")
                scenario: Scenario = await module.run(ctx)
                results.append(scenario)
                write_result(name, {"rows": [r.__dict__ for r in scenario.rows],
                                    "data": scenario.data, "notes": scenario.notes})
                for row in scenario.rows:
                    progress(f"  {row.metric}: {row.value:,.2f} {row.unit}"
                             + (f" ({row.ratio:.2f}x {row.baseline_name})" if row.ratio else ""))
        finally:
            if ctx.worker is not None:
                ctx.worker.terminate()
                ctx.worker.wait()
            await services.close()
    summary = table(results)
    print(summary)
    write_result("summary", {"table": summary, "seconds": time.monotonic() - started,
                             "scenarios": [s.name for s in results]})
    from .report import from_results, write_report

    if args.only:
        # The page keeps every scenario: the others' latest saved runs beside these.
        from_results()
    else:
        write_report(results, summary)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
