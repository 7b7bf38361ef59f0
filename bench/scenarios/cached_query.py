"""Scenario 1: a cached ``payment(id)`` query, 32 connections, against the floor (a minimal
Strawberry app with no I/O) and the naive server (every object from the primary)."""

from __future__ import annotations

from typing import Any

from ..harness import (
    BenchContext,
    Row,
    Scenario,
    Server,
    WrkResult,
    check_query,
    graphql_lua,
    progress,
    scripts_dir,
    wrk,
)

QUERY = (
    "query($id: ID!) { payment(id: $id) { id status amount currency reference createdAt "
    "updatedAt sourceAccount { id name currency balance } "
    "destinationAccount { id name currency balance } } }"
)
CONNECTIONS = 32


async def measure(ctx: BenchContext, server: Server, *, warm_s: float = 3.0) -> WrkResult:
    ids = ctx.payments[:50]
    await check_query(server, QUERY, {"id": ids[0]}, ctx.key)
    script = graphql_lua(scripts_dir() / "payment.lua", query=QUERY, variables={"id": ids[0]},
                         key=ctx.key, rotate={"id": ids})
    wrk(f"{server.url}/graphql", script, connections=CONNECTIONS, seconds=warm_s)  # warm-up
    progress(f"  {server.name}: {CONNECTIONS} connections, {ctx.seconds:.0f} s")
    return wrk(f"{server.url}/graphql", script, connections=CONNECTIONS, seconds=ctx.seconds)


async def run(ctx: BenchContext) -> Scenario:
    results: dict[str, WrkResult] = {}
    for name, start in (("floor", lambda: ctx.start_app("floor")),
                        ("paystream", lambda: ctx.start_api()),
                        ("naive", lambda: ctx.start_app("naive"))):
        server = await start()
        try:
            results[name] = await measure(ctx, server)
        finally:
            server.stop()
    api, floor, naive = results["paystream"], results["floor"], results["naive"]
    data: dict[str, Any] = {k: v.as_dict() for k, v in results.items()}
    name = "1 cached payment(id)"
    return Scenario("cached_query", [
        Row(name, "requests/s vs floor", api.requests_per_s, "req/s", floor.requests_per_s,
            "floor", ">= 0.7x floor", api.requests_per_s >= 0.7 * floor.requests_per_s),
        Row(name, "requests/s vs naive", api.requests_per_s, "req/s", naive.requests_per_s,
            "naive", ">= 3x naive", api.requests_per_s >= 3 * naive.requests_per_s),
        Row(name, "p50 latency", api.p50_ms, "ms", floor.p50_ms, "floor p50"),
        Row(name, "p99 latency", api.p99_ms, "ms", floor.p99_ms, "floor p99"),
    ], data, [(f"wrk, 1 thread, {CONNECTIONS} connections, {ctx.seconds:.0f} s after a 3 s "
              "warm-up; 50 payment ids in rotation")])
