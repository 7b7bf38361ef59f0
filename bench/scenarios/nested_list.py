"""Scenario 2: an account's 50 latest payments, each with both accounts: requests/s against
the naive server, and SQL statements and Redis commands per request, cold and warm."""

from __future__ import annotations

import httpx

from ..common import RESULTS
from ..harness import (
    LOGS,
    BenchContext,
    Row,
    Scenario,
    Server,
    WrkResult,
    check_query,
    graphql_lua,
    profile,
    progress,
    redis_commands,
    scrape,
    scripts_dir,
    summarize_profile,
    wrk,
)

QUERY = (
    "query($id: ID!) { account(id: $id) { id balance payments(first: 50) { edges { node { "
    "id status amount sourceAccount { id name balance } destinationAccount { id name balance } "
    "} } } } }"
)
CONNECTIONS = 32
SQL = "paystream_sql_statements_total"
HITS = "paystream_cache_lookups_total{result=\"hit\"}"
MISSES = "paystream_cache_lookups_total{result=\"miss\"}"
PAGE_MISSES = "paystream_page_cache_lookups_total{result=\"miss\"}"


async def counted(ctx: BenchContext, server: Server, requests: int) -> tuple[float, float]:
    """SQL statements and Redis commands per request over ``requests`` sequential requests."""
    # /metrics runs the readiness checks before it renders (statements of its own, counted
    # in what it renders): two scrapes in a row measure that, to take it out of the window.
    first = await scrape(server, SQL)
    sql_before = await scrape(server, SQL)
    own = sql_before - first
    redis_before = await redis_commands(ctx.settings.redis.url)
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
        for _ in range(requests):
            response = await http.post(
                "/graphql", json={"query": QUERY, "variables": {"id": ctx.listed_account}},
                headers={"Authorization": f"Bearer {ctx.key}"})
            assert not response.json().get("errors"), response.text
    sql = (await scrape(server, SQL) - sql_before - own) / requests
    # Minus the INFO command that reads the counters.
    redis = (await redis_commands(ctx.settings.redis.url) - redis_before - 1) / requests
    return sql, redis


async def flush_cache(ctx: BenchContext) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(ctx.settings.redis.url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def load(ctx: BenchContext, server: Server, *, profiled: bool = False) -> WrkResult:
    """``profiled``: with BENCH_PROFILE_API=1 (and py-spy), the server is sampled during the
    load into bench/results/nested-profile.txt."""
    script = graphql_lua(scripts_dir() / "nested.lua", query=QUERY,
                         variables={"id": ctx.listed_account}, key=ctx.key)
    wrk(f"{server.url}/graphql", script, connections=CONNECTIONS, seconds=3)
    progress(f"  {server.name}: {CONNECTIONS} connections, {ctx.seconds:.0f} s")
    folded = LOGS / "nested.folded"
    spy = profile("BENCH_PROFILE_API", server.process.pid, ctx.seconds, folded) if profiled else None
    result = wrk(f"{server.url}/graphql", script, connections=CONNECTIONS, seconds=ctx.seconds)
    if spy is not None:
        spy.wait(60)
        if folded.exists():
            (RESULTS / "nested-profile.txt").write_text(
                summarize_profile(folded, "the API under the nested list (py-spy, 100 Hz)"))
    return result


async def run(ctx: BenchContext) -> Scenario:
    api = await ctx.start_api()
    try:
        data = await check_query(api, QUERY, {"id": ctx.listed_account}, ctx.key)
        assert len(data["account"]["payments"]["edges"]) == 50
        await flush_cache(ctx)
        cold_sql, cold_redis = await counted(ctx, api, 1)
        page_misses = await scrape(api, PAGE_MISSES)
        warm_sql, warm_redis = await counted(ctx, api, 20)
        warm_page_misses = (await scrape(api, PAGE_MISSES) - page_misses) / 20
        hits_before, misses_before = (await scrape(api, HITS),
                                      await scrape(api, MISSES))
        ours = await load(ctx, api, profiled=True)
        hits = await scrape(api, HITS) - hits_before
        misses = await scrape(api, MISSES) - misses_before
    finally:
        api.stop()
    naive = await ctx.start_app("naive")
    try:
        naive_sql, _ = await counted(ctx, naive, 5)
        theirs = await load(ctx, naive)
    finally:
        naive.stop()
    name = "2 nested list (50 payments + accounts)"
    hit_ratio = hits / (hits + misses) if hits + misses else 0.0
    return Scenario("nested_list", [
        Row(name, "requests/s vs naive", ours.requests_per_s, "req/s", theirs.requests_per_s,
            "naive", ">= 10x naive", ours.requests_per_s >= 10 * theirs.requests_per_s),
        Row(name, "p99 latency", ours.p99_ms, "ms", theirs.p99_ms, "naive p99"),
        Row(name, "SQL statements/request, cold", cold_sql, "stmts", naive_sql, "naive",
            "<= 3", cold_sql <= 3),
        Row(name, "SQL statements/request, warm", warm_sql, "stmts", naive_sql, "naive",
            "0", warm_sql == 0),
        Row(name, "page lookups missed/request, warm", warm_page_misses, "misses"),
        Row(name, "Redis commands/request, cold", cold_redis, "cmds"),
        Row(name, "Redis commands/request, warm", warm_redis, "cmds"),
        Row(name, "cache hit ratio under load", hit_ratio, ""),
    ], {"paystream": ours.as_dict(), "naive": theirs.as_dict(), "cold_sql": cold_sql,
        "warm_sql": warm_sql, "cold_redis": cold_redis, "warm_redis": warm_redis,
        "naive_sql": naive_sql, "cache_hits": hits, "cache_misses": misses},
        [(f"wrk, 1 thread, {CONNECTIONS} connections; Redis commands counted server-side "
         "(INFO commandstats), including the rate limiter's script")])
