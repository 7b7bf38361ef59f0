"""Who may see and do what (DESIGN.md section 3), through every resolver: what a caller may not
see answers exactly as if it did not exist, counterparties never show a balance, and keys act
only within their scopes and only while not revoked."""

from __future__ import annotations

import uuid

import pytest

from paystream.db.partners import revoke_api_key

from .conftest import gql, refused_within, wait_for_replay
from .test_write_path import CREATE, payment_input

pytestmark = pytest.mark.integration

READ_ONLY = ("payments:read",)
WRITE_ONLY = ("payments:write",)

PAYMENT = """query($id: ID!) { payment(id: $id) { id status amount currency reference
  sourceAccount { id name currency balance } destinationAccount { id name currency balance } } }"""
ACCOUNT = "query($id: ID!) { account(id: $id) { id name currency balance } }"
LIST = """query($a: ID!, $after: String) { payments(accountId: $a, after: $after) {
  edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }"""
COUNTERPARTY_PAYMENTS = """query($id: ID!) { payment(id: $id) {
  sourceAccount { id balance payments(first: 100) { edges { node { id } } } } } }"""
OWN_PAYMENTS = "query($id: ID!) { account(id: $id) { payments(first: 100) { edges { node { id } } } } }"


def comparable(body: dict[str, object]) -> dict[str, object]:
    """The response without the per-request id errors carry: everything else must match."""
    errors = body.get("errors")
    if not errors:
        return body
    stripped = []
    for error in errors:  # type: ignore[attr-defined]
        extensions = {k: v for k, v in error.get("extensions", {}).items() if k != "requestId"}
        stripped.append({**error, "extensions": extensions})
    return {**body, "errors": stripped}


def absent() -> str:
    return str(uuid.uuid4())


async def create(client, partner, source: str, destination: str, amount: str = "1.00") -> str:  # type: ignore[no-untyped-def]
    body = await gql(client, CREATE, payment_input(source, destination, amount), key=partner.key)
    assert "errors" not in body, body
    return str(body["data"]["createPayment"]["id"])  # type: ignore[index]


async def test_foreign_payment_is_null_exactly_like_an_absent_one(client, make_partner) -> None:
    owner, stranger = await make_partner(), await make_partner()
    payment_id = await create(client, owner, await owner.account(), await owner.account())

    foreign = await gql(client, PAYMENT, {"id": payment_id}, key=stranger.key)
    missing = await gql(client, PAYMENT, {"id": absent()}, key=stranger.key)
    assert foreign == missing == {"data": {"payment": None}}
    # The owner does see it, so the null above is the rule at work, not a failed read.
    mine = await gql(client, PAYMENT, {"id": payment_id}, key=owner.key)
    assert mine["data"]["payment"]["id"] == payment_id  # type: ignore[index]


async def test_foreign_account_is_null_exactly_like_an_absent_one(client, make_partner) -> None:
    owner, stranger = await make_partner(), await make_partner()
    account = await owner.account(balance="12.34", name="savings")

    foreign = await gql(client, ACCOUNT, {"id": account}, key=stranger.key)
    missing = await gql(client, ACCOUNT, {"id": absent()}, key=stranger.key)
    assert foreign == missing == {"data": {"account": None}}
    mine = await gql(client, ACCOUNT, {"id": account}, key=owner.key)
    assert mine == {"data": {"account": {"id": account, "name": "savings", "currency": "USD",
                                         "balance": "12.34"}}}


async def test_counterparty_account_shows_id_name_currency_but_no_balance(
    client, make_partner
) -> None:
    payer, payee = await make_partner(), await make_partner()
    source = await payer.account(balance="50.00", name="payer-main")
    destination = await payee.account(balance="7.00", name="payee-main")
    payment_id = await create(client, payer, source, destination, "2.00")

    seen_by_payee = await gql(client, PAYMENT, {"id": payment_id}, key=payee.key)
    shown = seen_by_payee["data"]["payment"]  # type: ignore[index]
    assert shown["sourceAccount"] == {"id": source, "name": "payer-main", "currency": "USD",
                                      "balance": None}
    assert shown["destinationAccount"]["id"] == destination
    assert shown["destinationAccount"]["balance"] is not None

    seen_by_payer = await gql(client, PAYMENT, {"id": payment_id}, key=payer.key)
    shown = seen_by_payer["data"]["payment"]  # type: ignore[index]
    assert shown["destinationAccount"] == {"id": destination, "name": "payee-main",
                                           "currency": "USD", "balance": None}
    assert shown["sourceAccount"]["balance"] is not None


async def test_payments_of_a_foreign_account_list_like_an_absent_one(client, make_partner) -> None:
    owner, stranger = await make_partner(), await make_partner()
    source = await owner.account()
    await create(client, owner, source, await owner.account())
    # Lists are read from a replica and the replica may not have the payment yet.
    await wait_for_replay(owner.services.db)

    foreign = await gql(client, LIST, {"a": source}, key=stranger.key)
    missing = await gql(client, LIST, {"a": absent()}, key=stranger.key)
    empty = {"data": {"payments": {"edges": [], "pageInfo": {"hasNextPage": False,
                                                             "endCursor": None}}}}
    assert foreign == missing == empty
    # A bad cursor is refused the same way whether or not the account is the caller's.
    bad_foreign = await gql(client, LIST, {"a": source, "after": "x"}, key=stranger.key)
    bad_missing = await gql(client, LIST, {"a": absent(), "after": "x"}, key=stranger.key)
    assert comparable(bad_foreign) == comparable(bad_missing)
    assert bad_foreign["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"  # type: ignore[index]
    mine = await gql(client, LIST, {"a": source}, key=owner.key)
    assert len(mine["data"]["payments"]["edges"]) == 1  # type: ignore[index]


async def test_counterparty_account_lists_only_payments_shared_with_the_caller(
    client, make_partner
) -> None:
    a, b, c = await make_partner(), await make_partner(), await make_partner()
    a1, a2 = await a.account(), await a.account()
    b1, b2 = await b.account(), await b.account()
    c1 = await c.account()
    shared = [await create(client, a, a1, b1), await create(client, a, a1, b2)]
    private = [await create(client, a, a1, a2), await create(client, c, c1, a1)]
    await wait_for_replay(a.services.db)

    body = await gql(client, COUNTERPARTY_PAYMENTS, {"id": shared[0]}, key=b.key)
    account = body["data"]["payment"]["sourceAccount"]  # type: ignore[index]
    assert account["id"] == a1 and account["balance"] is None
    listed = [edge["node"]["id"] for edge in account["payments"]["edges"]]
    assert listed == list(reversed(shared))  # newest first, nothing of a's or c's own
    # The owner sees every payment of the same account.
    own = await gql(client, OWN_PAYMENTS, {"id": a1}, key=a.key)
    listed = [e["node"]["id"] for e in own["data"]["account"]["payments"]["edges"]]  # type: ignore[index]
    assert sorted(listed) == sorted(shared + private)


async def test_create_from_a_foreign_account_is_refused_like_an_absent_one(
    client, make_partner
) -> None:
    owner, thief = await make_partner(), await make_partner()
    victim = await owner.account(balance="100.00")
    mine = await thief.account()

    foreign = await gql(client, CREATE, payment_input(victim, mine, "5.00", key="k"),
                        key=thief.key)
    missing = await gql(client, CREATE, payment_input(absent(), mine, "5.00", key="k"),
                        key=thief.key)
    assert comparable(foreign) == comparable(missing)
    assert foreign["data"] is None
    assert foreign["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"  # type: ignore[index]
    assert foreign["errors"][0]["extensions"]["field"] == "sourceAccountId"  # type: ignore[index]
    # Nothing was recorded for the refused request (the key is still free).
    ok = await gql(client, CREATE, payment_input(mine, victim, "0.01", key="k"), key=thief.key)
    assert "errors" not in ok, ok


async def test_malformed_ids_read_as_absent(client, make_partner) -> None:
    partner = await make_partner()
    account = await partner.account()
    for bad in ("", "nope", "1234", "' OR 1=1 --", "0" * 300):
        assert await gql(client, PAYMENT, {"id": bad}, key=partner.key) == {
            "data": {"payment": None}}
        assert await gql(client, ACCOUNT, {"id": bad}, key=partner.key) == {
            "data": {"account": None}}
        listed = await gql(client, LIST, {"a": bad}, key=partner.key)
        assert listed["data"]["payments"]["edges"] == []  # type: ignore[index]
    refused = await gql(client, CREATE, payment_input("nope", account, "1.00"), key=partner.key)
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"  # type: ignore[index]
    assert refused["errors"][0]["extensions"]["field"] == "sourceAccountId"  # type: ignore[index]


async def test_read_only_key_cannot_create_payments(client, make_partner, services) -> None:
    partner = await make_partner(scopes=READ_ONLY)
    source, destination = await partner.account(), await partner.account()
    body = await gql(client, CREATE, payment_input(source, destination, "1.00"), key=partner.key)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"  # type: ignore[index]
    # It still reads.
    shown = await gql(client, ACCOUNT, {"id": source}, key=partner.key)
    assert shown["data"]["account"]["balance"] == "100.00"  # type: ignore[index]


async def test_write_only_key_cannot_read(client, make_partner) -> None:
    partner = await make_partner(scopes=WRITE_ONLY)
    source, destination = await partner.account(), await partner.account()
    created = await gql(client, CREATE, payment_input(source, destination, "1.00"),
                        key=partner.key)
    payment_id = created["data"]["createPayment"]["id"]  # type: ignore[index]
    for query, variables in ((PAYMENT, {"id": payment_id}), (ACCOUNT, {"id": source}),
                             (LIST, {"a": source})):
        body = await gql(client, query, variables, key=partner.key)
        assert not any((body["data"] or {}).values()), query  # type: ignore[union-attr]
        assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]  # type: ignore[attr-defined]
    # Nor through the payment the mutation answers with: the account's other payments and
    # its balance are reads.
    nested = await gql(
        client,
        """mutation($input: CreatePaymentInput!) { createPayment(input: $input) {
             id sourceAccount { id balance payments { edges { node { id } } } } } }""",
        payment_input(source, destination, "1.00"), key=partner.key,
    )
    codes = sorted(e["extensions"]["code"] for e in nested["errors"])  # type: ignore[union-attr]
    assert codes and set(codes) == {"FORBIDDEN"}
    assert nested["data"] is None or nested["data"]["createPayment"]["sourceAccount"][  # type: ignore[index]
        "balance"] is None


async def test_missing_or_unknown_key_is_unauthenticated(client, make_partner) -> None:
    partner = await make_partner()
    account = await partner.account()
    for key in (None, "psk_not-a-key", partner.key + "x"):
        body = await gql(client, ACCOUNT, {"id": account}, key=key)
        assert body["data"] == {"account": None}
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"  # type: ignore[index]


async def test_revoked_key_is_refused_at_once_even_while_the_replica_lags(
    client, make_partner, services, devstack
) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to pause the replica")
    partner = await make_partner()
    account = await partner.account()
    assert (await gql(client, ACCOUNT, {"id": account}, key=partner.key))["data"]["account"]  # type: ignore[index]
    # The replica knows the key; from now on it does not learn of the revocation.
    await wait_for_replay(services.db)
    devstack.pause_replica_replay()
    try:
        async with services.db.write_session() as session:
            assert await revoke_api_key(session, partner.key)
        body = await refused_within(lambda: gql(client, ACCOUNT, {"id": account}, key=partner.key))
        assert body["data"] == {"account": None}
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"  # type: ignore[index]
    finally:
        devstack.resume_replica_replay()
    body = await gql(client, ACCOUNT, {"id": account}, key=partner.key)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"  # type: ignore[index]
