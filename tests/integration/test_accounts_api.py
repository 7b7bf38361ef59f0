"""createAccount and accounts(first, after): partners open and list their own accounts."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from .conftest import gql

pytestmark = pytest.mark.integration

CREATE = """
mutation($input: CreateAccountInput!) {
  createAccount(input: $input) { id name currency balance }
}
"""
LIST = """
query($first: Int, $after: String) {
  accounts(first: $first, after: $after) {
    edges { cursor node { id name currency balance } } pageInfo { hasNextPage endCursor }
  }
}
"""


def account_input(name: str = "Operating", currency: str = "USD",
                  key: str | None = None) -> dict[str, object]:
    return {"input": {"idempotencyKey": key or uuid.uuid4().hex, "name": name,
                      "currency": currency}}


async def test_create_account_opens_a_zero_balance_account_owned_by_the_caller(
        client, make_partner) -> None:
    partner, other = await make_partner(), await make_partner()
    body = await gql(client, CREATE, account_input("Payroll", "EUR"), key=partner.key)
    created = body["data"]["createAccount"]
    assert (created["name"], created["currency"], created["balance"]) == ("Payroll", "EUR", "0.00")
    shown = await gql(client, "query($id: ID!) { account(id: $id) { id balance } }",
                      {"id": created["id"]}, key=partner.key)
    assert shown["data"]["account"] == {"id": created["id"], "balance": "0.00"}
    foreign = await gql(client, "query($id: ID!) { account(id: $id) { id } }",
                        {"id": created["id"]}, key=other.key)
    assert foreign["data"]["account"] is None


async def test_create_account_is_idempotent_per_partner_and_key(client, make_partner) -> None:
    partner, other = await make_partner(), await make_partner()
    request = account_input(key="acct-1")
    first = (await gql(client, CREATE, request, key=partner.key))["data"]["createAccount"]
    again = (await gql(client, CREATE, request, key=partner.key))["data"]["createAccount"]
    assert again["id"] == first["id"]
    # Another partner's key space is its own.
    theirs = (await gql(client, CREATE, request, key=other.key))["data"]["createAccount"]
    assert theirs["id"] != first["id"]
    conflict = await gql(client, CREATE, account_input(name="Other", key="acct-1"), key=partner.key)
    assert conflict["errors"][0]["extensions"]["code"] == "IDEMPOTENCY_CONFLICT"


async def test_concurrent_duplicates_create_exactly_one_account(client, make_partner) -> None:
    partner = await make_partner()
    request = account_input(key="same")
    bodies = await asyncio.gather(*(gql(client, CREATE, request, key=partner.key)
                                    for _ in range(8)))
    ids = {b["data"]["createAccount"]["id"] for b in bodies}
    assert len(ids) == 1
    listed = (await gql(client, LIST, {"first": 100}, key=partner.key))["data"]["accounts"]
    assert [e["node"]["id"] for e in listed["edges"]] == list(ids)


@pytest.mark.parametrize(("name", "currency", "field"), [
    ("", "USD", "name"), ("x" * 201, "USD", "name"), ("ok", "usd", "currency"),
    ("ok", "XYZ", "currency"), ("bad\nname", "USD", "name"),
])
async def test_bad_input_names_the_field(client, make_partner, name, currency, field) -> None:
    partner = await make_partner()
    body = await gql(client, CREATE, account_input(name, currency), key=partner.key)
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": field,
                                               "requestId": body["errors"][0]["extensions"]["requestId"]}


async def test_create_account_needs_the_write_scope(client, make_partner) -> None:
    reader = await make_partner(scopes=("payments:read",))
    body = await gql(client, CREATE, account_input(), key=reader.key)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_accounts_lists_the_callers_accounts_newest_first_with_cursors(
        client, make_partner) -> None:
    partner, other = await make_partner(), await make_partner()
    await other.account()
    made = [await partner.account(name="cli")]
    for index in range(4):
        body = await gql(client, CREATE, account_input(f"api {index}"), key=partner.key)
        made.append(body["data"]["createAccount"]["id"])
    newest_first = list(reversed(made))

    seen: list[str] = []
    after = None
    while True:
        page = (await gql(client, LIST, {"first": 2, "after": after}, key=partner.key))
        connection = page["data"]["accounts"]
        seen += [e["node"]["id"] for e in connection["edges"]]
        assert all(e["node"]["balance"] is not None for e in connection["edges"])
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
        assert after == connection["edges"][-1]["cursor"]
    assert seen == newest_first
    bad = await gql(client, LIST, {"after": "not-a-cursor"}, key=partner.key)
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
