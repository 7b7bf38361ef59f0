"""Scenario 7: scenarios 1 and 3 with ``paystream api --workers 2`` against 1."""

from __future__ import annotations

from ..harness import BenchContext, Row, Scenario
from . import cached_query, create_payment


async def run(ctx: BenchContext) -> Scenario:
    figures: dict[int, dict[str, float]] = {}
    for workers in (1, 2):
        api = await ctx.start_api(workers=workers)
        try:
            query = await cached_query.measure(ctx, api)
            mutation, accepted = await create_payment.measure(ctx, api)
        finally:
            api.stop()
        figures[workers] = {"query_rps": query.requests_per_s, "query_p99": query.p99_ms,
                            "accepted_per_s": accepted / ctx.seconds,
                            "create_p99": mutation.p99_ms}
    one, two = figures[1], figures[2]
    name = "7 scaling (--workers 2 vs 1)"
    return Scenario("scaling", [
        Row(name, "payment(id) requests/s", two["query_rps"], "req/s", one["query_rps"],
            "--workers 1"),
        Row(name, "createPayment accepted/s", two["accepted_per_s"], "payments/s",
            one["accepted_per_s"], "--workers 1"),
        Row(name, "createPayment p99", two["create_p99"], "ms", one["create_p99"], "--workers 1"),
    ], {str(k): v for k, v in figures.items()},
        [("2 cores: the load generator, PostgreSQL, Redis, the broker and the worker share them "
         "with the API processes, so 2 API workers cannot double anything here")])
