"""Cursor pagination and DataLoader batching on a nested query."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import event, text

from .conftest import cache_settled, gql, wait_for_replay

pytestmark = pytest.mark.integration

PAGE = """query($a: ID!, $first: Int, $after: String) {
  payments(accountId: $a, first: $first, after: $after) {
    edges { cursor node { id amount sourceAccount { id name balance } destinationAccount { id name } } }
    pageInfo { hasNextPage endCursor } } }"""


async def _seed(services, partner, count: int) -> tuple[str, list[str]]:
    """``count`` settled payments from one account to a few others, inserted directly."""
    source = await partner.account(balance="1000.00")
    others = [await partner.account(balance="0") for _ in range(5)]
    ids = []
    async with services.db.write_session() as session:
        partner_id = (await session.execute(text("SELECT partner_id FROM accounts WHERE id = :a"),
                                            {"a": uuid.UUID(source)})).scalar()
        for i in range(count):
            payment_id = uuid.uuid4()
            ids.append(str(payment_id))
            await session.execute(text(
                # Settled FAILED (no entries, nothing queued): the ledger stays sound.
                "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
                " source_account_id, destination_account_id, amount_minor, currency, status,"
                " failure_reason, created_at) VALUES (:id, :p, :k, repeat('a', 64), :s, :d,"
                " :amt, 'USD', 'FAILED', 'INSUFFICIENT_FUNDS', now() - make_interval(secs => :age))"),
                {"id": payment_id, "p": partner_id, "k": str(payment_id), "s": uuid.UUID(source),
                 "d": uuid.UUID(others[i % 5]), "amt": 100 + i, "age": count - i})
    await wait_for_replay(services.db)
    return source, list(reversed(ids))  # newest first


async def test_pages_walk_newest_first_without_gaps(client, services, make_partner) -> None:
    partner = await make_partner()
    source, newest_first = await _seed(services, partner, 45)
    seen, after = [], None
    while True:
        body = await gql(client, PAGE, {"a": source, "first": 20, "after": after}, key=partner.key)
        page = body["data"]["payments"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == newest_first


async def test_first_is_capped_and_bad_cursor_refused(client, services, make_partner) -> None:
    partner = await make_partner()
    source, _ = await _seed(services, partner, 105)
    body = await gql(client, PAGE, {"a": source, "first": 1000}, key=partner.key)
    assert len(body["data"]["payments"]["edges"]) == 100
    bad = await gql(client, PAGE, {"a": source, "after": "bm90LWEtY3Vyc29y"}, key=partner.key)
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_foreign_account_lists_nothing(client, services, make_partner) -> None:
    owner, stranger = await make_partner(), await make_partner()
    source, _ = await _seed(services, owner, 3)
    body = await gql(client, PAGE, {"a": source}, key=stranger.key)
    assert body["data"]["payments"] == {"edges": [], "pageInfo": {"hasNextPage": False,
                                                                   "endCursor": None}}


async def test_nested_fifty_payments_batch_sql_and_redis(client, services, make_partner) -> None:
    partner = await make_partner()
    source, _ = await _seed(services, partner, 50)
    await cache_settled(services)  # this test counts commands and statements
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if "api_keys" not in statement:  # authentication is not part of the query
            statements.append(statement)

    engines = [services.db.primary, services.db._primary_reader, *services.db.replicas]
    commands: list[str] = []
    redis = services.cache.redis
    original = redis.execute_command

    async def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        commands.append(str(args[0]))
        return await original(*args, **kwargs)

    for engine in engines:
        event.listen(engine.sync_engine, "before_cursor_execute", count)
    redis.execute_command = counting
    try:
        await services.cache.delete(*[f"account:{a}" for a in partner.accounts])
        commands.clear()
        cold = await gql(client, PAGE, {"a": source, "first": 50}, key=partner.key)
        cold_sql, cold_redis = len(statements), list(commands)
        statements.clear()
        commands.clear()
        hits, misses = services.cache.hits, services.cache.misses
        warm = await gql(client, PAGE, {"a": source, "first": 50}, key=partner.key)
        warm_sql, warm_redis = len(statements), list(commands)
        warm_hits, warm_misses = services.cache.hits - hits, services.cache.misses - misses
    finally:
        redis.execute_command = original
        for engine in engines:
            event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert len(cold["data"]["payments"]["edges"]) == 50
    assert warm["data"] == cold["data"]
    # Cold, per nesting level at most one statement per entity type: the listed account
    # (level 0), the page on the primary (level 1), the 50 payments' accounts in one batch
    # (level 2). Redis: one MGET per entity type per level, and the page's lookup.
    assert cold_sql == 3
    assert cold_redis.count("MGET") == 4
    # Warm: no statement at all. The page (the ids it lists, under the account's page
    # generation), its payments and their accounts all come from Redis.
    assert warm_sql == 0
    assert warm_redis.count("MGET") == 4
    # After warm-up every entity lookup is a hit: the listed account, the 50 payments of the
    # page and the five accounts of the 50 payments (the loader asks once per id per request).
    assert (warm_hits, warm_misses) == (56, 0)


async def _warm_commands(client, services, partner, query: str, source: str) -> tuple[list[str], dict]:  # type: ignore[no-untyped-def,type-arg]
    """The Redis commands of a warm run of ``query`` (run once before, to warm it), and its
    answer."""
    await gql(client, query, {"a": source, "first": 50}, key=partner.key)
    redis = services.cache.redis
    original, commands = redis.execute_command, []

    async def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        commands.append(str(args[0]))
        return await original(*args, **kwargs)

    redis.execute_command = counting
    try:
        body = await gql(client, query, {"a": source, "first": 50}, key=partner.key)
    finally:
        redis.execute_command = original
    return commands, body


async def test_a_page_loads_its_accounts_in_one_batch_only_when_they_are_selected(
        client, services, make_partner) -> None:
    partner = await make_partner()
    source, newest_first = await _seed(services, partner, 20)
    await cache_settled(services)
    bare = ("query($a: ID!, $first: Int) { payments(accountId: $a, first: $first) {"
            " edges { node { id } } } }")
    commands, body = await _warm_commands(client, services, partner, bare, source)
    assert [e["node"]["id"] for e in body["data"]["payments"]["edges"]] == newest_first
    # The listed account, the page, its payments: no lookup of accounts nobody asked for.
    assert commands.count("MGET") == 3
    # Asked for through a fragment, they come in one batch for the whole page.
    spread = ("query($a: ID!, $first: Int) { payments(accountId: $a, first: $first) {"
              " edges { ...on PaymentEdge { node { ...Ends } } } } }"
              " fragment Ends on Payment { id destinationAccount { id } }")
    commands, body = await _warm_commands(client, services, partner, spread, source)
    assert commands.count("MGET") == 4
    destinations = {e["node"]["destinationAccount"]["id"] for e in body["data"]["payments"]["edges"]}
    assert len(destinations) == 5 and source not in destinations
