"""Query limits, each with a query just under and just over it; all refused before execution
with QUERY_TOO_COMPLEX. Also the body size limit and batched requests."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from graphql.language import Lexer, Source, TokenKind

from ._gateway import app_client
from .conftest import gql

pytestmark = pytest.mark.integration




def tokens(query: str) -> int:
    lexer = Lexer(Source(query))
    count = 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


def depth_query(depth: int) -> str:
    # payment(1) > sourceAccount(2) > payments(3) > edges(4) > node(5) > ... > id(depth)
    fields = ["sourceAccount", "payments(first: 1)", "edges", "node"]
    path = ["payment(id: $id)"] + [fields[i % 4] for i in range(depth - 2)] + ["id"]
    if path[-2].startswith("payments") or path[-2] == "edges":
        raise ValueError("pick a depth that ends on an object with an id")
    query = "id"
    for field in reversed(path[:-1]):
        query = f"{field} {{ {query} }}"
    return f"query($id: ID!) {{ {query} }}"


def refused(body: dict[str, object], limit: str) -> None:
    assert body.get("data") is None, body  # nothing executed
    errors = body["errors"]
    assert isinstance(errors, list) and len(errors) == 1, body
    assert errors[0]["extensions"]["code"] == "QUERY_TOO_COMPLEX", body
    assert errors[0]["extensions"]["limit"] == limit


async def test_depth_limit(client, make_partner, settings) -> None:
    partner = await make_partner()
    limit = settings.limits.max_query_depth
    variables = {"id": str(uuid.uuid4())}
    under = await gql(client, depth_query(limit), variables, key=partner.key)
    assert under == {"data": {"payment": None}}
    refused(await gql(client, depth_query(limit + 4), variables, key=partner.key), "depth")
    refused(await gql(client, depth_query(limit + 1), variables, key=partner.key), "depth")


async def test_alias_limit(client, make_partner, settings) -> None:
    partner = await make_partner()
    limit = settings.limits.max_aliases

    def aliased(count: int) -> str:
        return "query($id: ID!) { " + " ".join(
            f"a{i}: payment(id: $id) {{ id }}" for i in range(count)) + " }"

    variables = {"id": str(uuid.uuid4())}
    under = await gql(client, aliased(limit), variables, key=partner.key)
    assert under == {"data": {f"a{i}": None for i in range(limit)}}
    refused(await gql(client, aliased(limit + 1), variables, key=partner.key), "aliases")


async def test_token_limit(client, make_partner, settings) -> None:
    partner = await make_partner()
    limit = settings.limits.max_tokens
    base = 'query($id: ID!) { payment(id: $id) { } }'
    padding = limit - tokens(base)
    # Repeated fields, spread over several names: graphql-core's overlap check recurses per
    # repeated name and aborts validation past a few hundred of one name.
    names = ["id", "status", "amount", "currency", "reference", "failureReason", "createdAt", "updatedAt"]

    def fields(count: int) -> str:
        return "{ " + " ".join(names[i % len(names)] for i in range(count)) + " }"

    under = base.replace("{ }", fields(padding))
    over = base.replace("{ }", fields(padding + 1))
    assert (tokens(under), tokens(over)) == (limit, limit + 1)
    variables = {"id": str(uuid.uuid4())}
    assert await gql(client, under, variables, key=partner.key) == {"data": {"payment": None}}
    refused(await gql(client, over, variables, key=partner.key), "tokens")


async def test_cost_limit_counts_page_sizes_capped(settings, make_partner) -> None:
    # payments(1) + first x (edges + node + id): 1 + 3 * first.
    async with app_client(settings, limits={"max_query_cost": 49, "max_page_size": 100}) as (http, _):
        partner = await make_partner()
        account = await partner.account()
        page = "query($a: ID!) {{ payments(accountId: $a, first: {}) {{ edges {{ node {{ id }} }} }} }}"
        under = await gql(http, page.format(16), {"a": account}, key=partner.key)
        assert under == {"data": {"payments": {"edges": []}}}
        refused(await gql(http, page.format(17), {"a": account}, key=partner.key), "cost")
        # A variable page size counts as the cap (100): refused at any value.
        variable = ("query($a: ID!, $n: Int) { payments(accountId: $a, first: $n) "
                    "{ edges { node { id } } } }")
        refused(await gql(http, variable, {"a": account, "n": 1}, key=partner.key), "cost")
    # With the default limit, the largest page of a plain listing is well within it.
    assert 1 + 3 * settings.limits.max_page_size <= settings.limits.max_query_cost


async def test_first_above_the_cap_is_capped_in_the_cost(settings, make_partner) -> None:
    async with app_client(settings, limits={"max_query_cost": 31, "max_page_size": 10}) as (http, _):
        partner = await make_partner()
        account = await partner.account()
        page = "query($a: ID!) { payments(accountId: $a, first: 1000) { edges { node { id } } } }"
        body = await gql(http, page, {"a": account}, key=partner.key)
        assert body == {"data": {"payments": {"edges": []}}}


async def test_fragments_are_expanded_and_cyclic_ones_refused(client, make_partner, settings) -> None:
    partner = await make_partner()
    limit = settings.limits.max_aliases
    spread = ("query($id: ID!) { ...F ...F } "
              "fragment F on Query { " + " ".join(f"a{i}: payment(id: $id) {{ id }}"
                                                 for i in range(limit // 2 + 1)) + " }")
    refused(await gql(client, spread, {"id": str(uuid.uuid4())}, key=partner.key), "aliases")
    cyclic = "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"
    body = await gql(client, cyclic, key=partner.key)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def padded_body(size: int) -> bytes:
    """A valid GraphQL request body of exactly ``size`` bytes (whitespace padding)."""
    empty = json.dumps({"query": "{ __typename }"}).encode()
    pad = size - len(empty)
    assert pad >= 0
    return json.dumps({"query": "{ __typename" + " " * pad + " }"}).encode()


async def test_body_limit_is_413_also_when_chunked(client, settings) -> None:
    limit = settings.limits.max_body_bytes
    headers = {"content-type": "application/json"}
    assert len(padded_body(limit)) == limit
    under = await client.post("/graphql", content=padded_body(limit), headers=headers)
    assert under.status_code == 200, under.text
    assert under.json() == {"data": {"__typename": "Query"}}
    over = await client.post("/graphql", content=padded_body(limit + 1), headers=headers)
    assert over.status_code == 413

    async def chunks(body: bytes):  # type: ignore[no-untyped-def]
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]

    chunked_under = await client.post("/graphql", content=chunks(padded_body(limit)), headers=headers)
    assert chunked_under.status_code == 200
    chunked_over = await client.post("/graphql", content=chunks(padded_body(limit + 1)),
                                     headers=headers)
    assert chunked_over.status_code == 413
    assert "content-length" not in chunked_over.request.headers


async def test_batches_are_capped(client: httpx.AsyncClient, settings) -> None:
    limit = settings.limits.max_batch_operations
    operation = {"query": "{ __typename }"}
    under = await client.post("/graphql", json=[operation] * limit)
    assert under.status_code == 200
    assert under.json() == [{"data": {"__typename": "Query"}}] * limit
    over = await client.post("/graphql", json=[operation] * (limit + 1))
    assert over.status_code == 400
    assert "Too many operations" in over.text
