"""Security: tenants cannot see or touch each other's data (refused exactly as if it did not
exist), scopes are enforced, revoked keys stop working at once, keys are stored hashed, errors
leak no internals, and production mode hides the schema.

Already proven elsewhere and not repeated here: paying from a foreign account
(test_write_path::test_cannot_pay_from_another_partners_account), subscribing to a foreign
payment or account over both protocols
(test_subscriptions::test_foreign_or_missing_payment_subscription_is_refused_alike), a foreign
account's listing (test_pagination::test_foreign_account_lists_nothing), introspection and
GraphiQL off in production with an INTERNAL error masked
(test_gateway::test_production_mode_hides_introspection_graphiql_and_internals).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from websockets.exceptions import ConnectionClosed

from paystream.client import PAYMENT_STATUS, GraphQLErrors, Subscriptions
from paystream.db.partners import revoke_api_key
from tests.integration._gateway import app_client

from .conftest import gql
from .leaks import assert_no_leak

pytestmark = pytest.mark.integration

CREATE = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"""


def payment_input(source: str, destination: str, amount: str = "1.00",
                  key: str | None = None) -> dict[str, Any]:
    return {"input": {"idempotencyKey": key or uuid.uuid4().hex, "sourceAccountId": source,
                      "destinationAccountId": destination, "amount": amount, "currency": "USD"}}


async def test_foreign_reads_look_exactly_like_missing_ones(client, make_partner, worker) -> None:
    owner, stranger = await make_partner(), await make_partner()
    source, destination = await owner.account(), await owner.account()
    created = await gql(client, CREATE, payment_input(source, destination), key=owner.key)
    payment_id = created["data"]["createPayment"]["id"]
    missing_payment, missing_account = str(uuid.uuid4()), str(uuid.uuid4())
    query = ("query($p: ID!, $a: ID!) { payment(id: $p) { id amount } account(id: $a) { id balance } "
             "payments(accountId: $a, first: 5) { edges { node { id } } pageInfo { hasNextPage } } }")
    foreign = await gql(client, query, {"p": payment_id, "a": source}, key=stranger.key)
    absent = await gql(client, query, {"p": missing_payment, "a": missing_account}, key=stranger.key)
    assert foreign == absent == {"data": {
        "payment": None, "account": None,
        "payments": {"edges": [], "pageInfo": {"hasNextPage": False}}}}
    # The owner does see them (so the stranger's nulls are a refusal, not an empty database).
    mine = await gql(client, query, {"p": payment_id, "a": source}, key=owner.key)
    assert mine["data"]["payment"]["id"] == payment_id and mine["data"]["account"]["id"] == source


async def test_counterparty_sees_the_payment_but_never_the_payers_balance(
    client, make_partner, services
) -> None:
    from tests.integration.conftest import wait_for_replay

    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="70.00"), await payee.account()
    created = await gql(client, CREATE, payment_input(source, destination), key=payer.key)
    payment_id = created["data"]["createPayment"]["id"]
    await wait_for_replay(services.db)  # lists come from a replica
    seen = await gql(client, "query($id: ID!) { payment(id: $id) { sourceAccount { id balance "
                     "payments(first: 5) { edges { node { id } } } } } account(id: \"" + source
                     + "\") { id } }", {"id": payment_id}, key=payee.key)
    account = seen["data"]["payment"]["sourceAccount"]
    assert account["id"] == source and account["balance"] is None
    # Through the payer's account the payee lists only what it may see: this payment.
    assert [e["node"]["id"] for e in account["payments"]["edges"]] == [payment_id]
    assert seen["data"]["account"] is None


async def test_write_only_key_cannot_read_or_subscribe(client, api, make_partner) -> None:
    writer = await make_partner(scopes=("payments:write",))
    source, destination = await writer.account(), await writer.account()
    created = await gql(client, CREATE, payment_input(source, destination), key=writer.key)
    payment_id = created["data"]["createPayment"]["id"]  # writing is allowed
    read = await gql(client, "query($id: ID!) { payment(id: $id) { id } }", {"id": payment_id},
                     key=writer.key)
    assert read["data"] == {"payment": None}
    assert read["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    async with Subscriptions(api.ws_url, writer.key) as ws:
        with pytest.raises(GraphQLErrors) as refused:
            async for _ in ws.subscribe(PAYMENT_STATUS, {"id": payment_id}):
                pass
    assert refused.value.codes == ["FORBIDDEN"]


async def test_revoked_key_is_refused_at_once_even_while_the_replica_lags(
    client, api, make_partner, services, devstack
) -> None:
    """The replica still has the key as live: revocation must not wait for it."""
    if devstack is None:
        pytest.skip("needs the embedded stack to pause the replica")
    from tests.integration.conftest import refused_within, wait_for_replay

    partner = await make_partner()
    account = await partner.account()
    query = "query($id: ID!) { account(id: $id) { id } }"
    assert (await gql(client, query, {"id": account}, key=partner.key))["data"]["account"]
    await wait_for_replay(services.db)
    devstack.pause_replica_replay()
    try:
        async with services.db.write_session() as session:
            assert await revoke_api_key(session, partner.key)
        # The precondition: the replica still holds the key as live.
        from paystream.db.partners import owner_of_key

        assert await services.db.read(lambda s: owner_of_key(s, partner.key)) is not None
        body = await refused_within(lambda: gql(client, query, {"id": account}, key=partner.key))
        assert body["data"] == {"account": None}
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        # A new websocket connection is refused too (another process: no shared state), with
        # graphql-transport-ws's "forbidden" close code.
        with pytest.raises(ConnectionClosed) as closed:
            async with Subscriptions(api.ws_url, partner.key):
                pass
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    finally:
        devstack.resume_replica_replay()


async def test_keys_are_stored_hashed_and_never_logged(client, api, make_partner, services) -> None:
    partner = await make_partner()
    await gql(client, "{ __typename }", key=partner.key)
    async with services.db.primary.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT k.* FROM api_keys k JOIN partners p ON p.id = k.partner_id WHERE p.name = :n"),
            {"n": partner.name})).mappings().all()
    assert len(rows) == 1
    row = dict(rows[0])
    assert row["key_hash"] == hashlib.sha256(partner.key.encode()).hexdigest()
    secret = partner.key.removeprefix("psk_")
    for column, value in row.items():
        # The display prefix holds a few characters of the key, never the key or most of it.
        assert secret not in str(value), column
        assert secret[8:20] not in str(value), column
    # A request with the key, and one with a wrong key, leave no key in the server's log.
    async with httpx.AsyncClient(base_url=api.url) as http:
        await http.post("/graphql", json={"query": "{ __typename }"},
                        headers={"Authorization": f"Bearer {partner.key}"})
        await http.post("/graphql", json={"query": "{ payment(id: \"x\") { id } }"},
                        headers={"Authorization": f"Bearer {partner.key}x"})
    assert secret not in api.log()


async def test_errors_carry_no_sql_path_or_stack(client, make_partner, services) -> None:
    """Every error the API gives for a spread of bad requests, and an INTERNAL one caused by a
    corrupt cache entry, names no SQL, file path, module or stack frame."""
    partner = await make_partner()
    account = await partner.account()
    bodies = [
        await gql(client, CREATE, payment_input(account, str(uuid.uuid4())), key=partner.key),
        await gql(client, CREATE, payment_input(account, "'; DROP TABLE payments; --"), key=partner.key),
        await gql(client, "query { payments(accountId: \"" + account + "\", after: \"../../etc\") "
                  "{ edges { cursor } } }", key=partner.key),
        await gql(client, "query { account(id: \"" + account + "\") { nope } }", key=partner.key),
        await gql(client, "{ payment(id: \"" + account + "\") { id } }", key="psk_" + "A" * 300),
    ]
    injected = await gql(client, "query { payment(id: \"' OR 1=1 --\") { id } }", key=partner.key)
    assert injected == {"data": {"payment": None}}  # an id that cannot exist, nothing more
    await services.cache.redis.set(f"account:{account}", b"7|{not json")
    try:
        bodies.append(await gql(client, "query($id: ID!) { account(id: $id) { name } }",
                                {"id": account}, key=partner.key))
    finally:
        await services.cache.delete(f"account:{account}")
    assert bodies[-1]["errors"][0]["extensions"]["code"] == "INTERNAL"
    for body in bodies:
        assert body.get("errors"), body
        assert_no_leak(json.dumps(body))


async def test_introspection_off_in_production_every_way(settings, make_partner) -> None:
    partner = await make_partner()
    async with app_client(settings, dev=False) as (http, _):
        for query in ("{ __type(name: \"Payment\") { fields { name } } }",
                      "query { a: __schema { queryType { name } } }",
                      "{ ... on Query { __schema { types { name } } } }"):
            body = await gql(http, query, key=partner.key)
            assert body.get("data") is None, (query, body)
            assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
        # __typename is not introspection of the schema and stays allowed.
        assert await gql(http, "{ __typename }", key=partner.key) == {"data": {"__typename": "Query"}}
