"""createPayments (bulk) on the real servers: each input answered on its own, in input order;
the good ones accepted in one transaction, settled by the worker; nothing half-written."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from paystream.services.ledger import verify_ledger

from ._gateway import app_client
from .conftest import StatusWatcher, gql, wait_for_replay

pytestmark = pytest.mark.integration

CREATE_MANY = """
mutation($inputs: [CreatePaymentInput!]!) {
  createPayments(inputs: $inputs) {
    payment { id status amount currency reference metadata { key value } }
    error { code message field reason }
  }
}
"""
CREATE = "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"


@pytest.fixture
async def watcher(migrated, worker):  # type: ignore[no-untyped-def]
    watcher = StatusWatcher(migrated)
    await watcher.start()
    yield watcher
    await watcher.stop()


def item(source: str, destination: str, amount: str, *, currency: str = "USD",
         key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"idempotencyKey": key or uuid.uuid4().hex, "sourceAccountId": source,
            "destinationAccountId": destination, "amount": amount, "currency": currency, **extra}


async def bulk(http: Any, key: str, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = await gql(http, CREATE_MANY, {"inputs": inputs}, key=key)
    assert "errors" not in body, body
    results = body["data"]["createPayments"]
    assert len(results) == len(inputs)
    for result in results:  # exactly one of the two
        assert (result["payment"] is None) != (result["error"] is None), result
    return list(results)


async def partner_rows(services: Any, partner_key: str) -> tuple[int, int]:
    """(payments, their queued requests) of the partner whose API key is given."""
    caller = await services.auth.caller_for(f"Bearer {partner_key}")
    async with services.db.primary.connect() as conn:
        payments = (await conn.execute(text(
            "SELECT count(*) FROM payments WHERE partner_id = :p"), {"p": caller.partner_id})).scalar()
        requests = (await conn.execute(text(
            "SELECT count(*) FROM outbox o JOIN payments p"
            " ON p.id = CAST(o.payload->>'payment_id' AS uuid)"
            " WHERE p.partner_id = :p AND o.topic = :t"),
            {"p": caller.partner_id, "t": services.settings.kafka.requested_topic})).scalar()
    return int(payments), int(requests)


def accepted_total(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("paystream_payments_accepted_total "):
            return float(line.split()[1])
    return 0.0


async def test_good_items_are_accepted_and_settle_bad_ones_are_answered_in_order(
        client, make_partner, watcher, services) -> None:
    payer, payee, stranger = await make_partner(), await make_partner(), await make_partner()
    source = await payer.account(balance="100.00")
    euros = await payer.account("EUR", balance="10.00")
    destination = await payee.account(balance="0")
    foreign = await stranger.account(balance="50.00")
    taken = uuid.uuid4().hex  # used before with another amount: a conflict
    first = await gql(client, CREATE, {"input": item(source, destination, "1.00", key=taken)},
                      key=payer.key)
    await watcher.terminal(first["data"]["createPayment"]["id"])
    repeated = uuid.uuid4().hex
    inputs = [
        item(source, destination, "10.00", key=repeated, reference="inv 1",
             metadata=[{"key": "order", "value": "A-1"}]),
        item(source, destination, "0.001"),
        item(source, euros, "1.00"),
        item(foreign, destination, "1.00"),
        item(source, str(uuid.uuid4()), "1.00"),
        item(source, destination, "5.00"),
        item(source, destination, "10.00", key=repeated),
        item(source, destination, "1000.00"),  # accepted; the worker fails it
        item(source, destination, "2.00", key=taken),
        item(source, destination, "1.00", metadata=[{"key": "bad key", "value": "x"}]),
        item(source, source, "1.00"),
    ]
    before = accepted_total((await client.get("/metrics")).text)
    results = await bulk(client, payer.key, inputs)

    errors = [(r["error"]["code"], r["error"]["field"], r["error"]["reason"])
              if r["error"] else None for r in results]
    assert errors == [
        None,
        ("BAD_USER_INPUT", "amount", None),
        ("BAD_USER_INPUT", "currency", "CURRENCY_MISMATCH"),
        ("BAD_USER_INPUT", "sourceAccountId", None),
        ("BAD_USER_INPUT", "destinationAccountId", None),
        None,
        ("BAD_USER_INPUT", "idempotencyKey", "DUPLICATE_IDEMPOTENCY_KEY"),
        None,
        ("IDEMPOTENCY_CONFLICT", "idempotencyKey", None),
        ("BAD_USER_INPUT", "metadata[0].key", None),
        ("BAD_USER_INPUT", "destinationAccountId", None),
    ]
    # The same messages the single mutation gives for the same inputs.
    for index in (1, 2, 3, 4, 9, 10):
        single = await gql(client, CREATE, {"input": inputs[index]}, key=payer.key)
        assert single["errors"][0]["message"] == results[index]["error"]["message"]
        assert single["errors"][0]["extensions"]["field"] == results[index]["error"]["field"]
    assert "inputs[0]" in results[6]["error"]["message"]

    good = {i: results[i]["payment"] for i in (0, 5, 7)}
    assert [p["amount"] for p in good.values()] == ["10.00", "5.00", "1000.00"]
    assert all(p["status"] == "PENDING" and p["currency"] == "USD" for p in good.values())
    assert good[0]["reference"] == "inv 1"
    assert good[0]["metadata"] == [{"key": "order", "value": "A-1"}]
    after = accepted_total((await client.get("/metrics")).text)
    assert after - before == 3

    outcomes = {i: (await watcher.terminal(p["id"]))["status"] for i, p in good.items()}
    assert outcomes == {0: "SUCCEEDED", 5: "SUCCEEDED", 7: "FAILED"}
    # 100 - 1 (the earlier single payment) - 10 - 5.
    balance = await gql(client, "query($id: ID!) { account(id: $id) { balance } }",
                        {"id": source}, key=payer.key)
    assert balance["data"]["account"]["balance"] == "84.00"
    # One payment per accepted input (plus the earlier one), each with its queued request.
    assert await partner_rows(services, payer.key) == (4, 4)
    await wait_for_replay(services.db)
    found = await gql(client, "query($id: ID!, $f: PaymentFilter) { payments(accountId: $id, "
                      "filter: $f) { edges { node { id } } } }",
                      {"id": source, "f": {"metadataKey": "order", "metadataValue": "A-1"}},
                      key=payer.key)
    assert [e["node"]["id"] for e in found["data"]["payments"]["edges"]] == [good[0]["id"]]
    report = await verify_ledger(services.db, services.settings)
    assert report.sound, report.violations


async def test_a_replayed_request_answers_the_same_payments_and_adds_nothing(
        client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    a, b = await partner.account(balance="30.00"), await partner.account(balance="0")
    inputs = [item(a, b, f"{n}.00") for n in (1, 2, 3)] + [item(a, b, "-1.00")]
    first = await bulk(client, partner.key, inputs)
    ids = [r["payment"]["id"] if r["payment"] else None for r in first]
    assert ids[3] is None and all(ids[:3])
    assert await partner_rows(services, partner.key) == (3, 3)
    again = await bulk(client, partner.key, inputs)
    assert [r["payment"]["id"] if r["payment"] else None for r in again] == ids
    assert again[3]["error"] == first[3]["error"]
    for payment_id in ids[:3]:
        assert (await watcher.terminal(str(payment_id)))["status"] == "SUCCEEDED"
    # After settling, the replay answers the payments as they stand; still nothing new.
    settled = await bulk(client, partner.key, inputs[:3])
    assert [r["payment"]["id"] for r in settled] == ids[:3]
    assert {r["payment"]["status"] for r in settled} == {"SUCCEEDED"}
    assert await partner_rows(services, partner.key) == (3, 3)
    # One item of a replay changed: only that one conflicts.
    changed = [inputs[0], {**inputs[1], "amount": "2.50"}]
    mixed = await bulk(client, partner.key, changed)
    assert mixed[0]["payment"]["id"] == ids[0]
    assert mixed[1]["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    balance = await gql(client, "query($id: ID!) { account(id: $id) { balance } }",
                        {"id": a}, key=partner.key)
    assert balance["data"]["account"]["balance"] == "24.00"


async def test_a_key_repeated_within_the_request_is_refused_on_its_repetitions(
        client, make_partner, services) -> None:
    partner = await make_partner()
    a, b = await partner.account(), await partner.account()
    key = uuid.uuid4().hex
    results = await bulk(client, partner.key, [item(a, b, "1.00", key=key),
                                               item(a, b, "1.00", key=key),
                                               item(a, b, "2.00", key=key)])
    assert results[0]["payment"] is not None
    for repeated in results[1:]:
        assert repeated["error"]["code"] == "BAD_USER_INPUT"
        assert repeated["error"]["field"] == "idempotencyKey"
        assert repeated["error"]["reason"] == "DUPLICATE_IDEMPOTENCY_KEY"
    assert await partner_rows(services, partner.key) == (1, 1)
    # The key counts as used even by an input refused for something else.
    other = uuid.uuid4().hex
    results = await bulk(client, partner.key, [item(a, b, "0.001", key=other),
                                               item(a, b, "1.00", key=other)])
    assert results[0]["error"]["field"] == "amount"
    assert results[1]["error"]["reason"] == "DUPLICATE_IDEMPOTENCY_KEY"
    assert await partner_rows(services, partner.key) == (1, 1)


async def test_more_inputs_than_the_limit_are_refused_before_anything(settings, make_partner
                                                                       ) -> None:
    async with app_client(settings, limits={"max_bulk_payments": 3}) as (http, services):
        partner = await make_partner()
        a, b = await partner.account(), await partner.account()
        body = await gql(http, CREATE_MANY, {"inputs": [item(a, b, "1.00") for _ in range(4)]},
                         key=partner.key)
        assert body["data"] is None
        error = body["errors"][0]
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
        assert (error["extensions"]["limit"], error["extensions"]["max"]) == ("batch", 3)
        # Aliases add up: two lists of two are a batch of four.
        twice = await gql(http, "mutation($x: [CreatePaymentInput!]!, $y: [CreatePaymentInput!]!)"
                          " { a: createPayments(inputs: $x) { error { code } }"
                          " b: createPayments(inputs: $y) { error { code } } }",
                          {"x": [item(a, b, "1.00") for _ in range(2)],
                           "y": [item(a, b, "1.00") for _ in range(2)]}, key=partner.key)
        assert twice["errors"][0]["extensions"]["limit"] == "batch"
        assert await partner_rows(services, partner.key) == (0, 0)
        # The service refuses it the same way when called directly.
        from paystream.domain.errors import QueryTooComplex
        from paystream.services.payments import CreatePayment

        caller = await services.auth.caller_for(f"Bearer {partner.key}")
        with pytest.raises(QueryTooComplex):
            await services.payments.create_many(caller, [CreatePayment(
                idempotency_key=uuid.uuid4().hex, source_account_id=a,
                destination_account_id=b, amount="1.00", currency="USD")] * 4)
        exactly = await bulk(http, partner.key, [item(a, b, "1.00") for _ in range(3)])
        assert all(r["payment"] for r in exactly)


async def test_a_batch_takes_a_rate_limit_token_per_input(settings, make_partner) -> None:
    """A bucket of 5 (refilled at 1 per 100 s): 3 pass, then 3 are refused whole (nothing
    taken, nothing written), then 2 pass; a batch above the burst can never pass and says so."""
    async with app_client(settings, limits={"mutation_burst": 5, "mutation_rate_per_s": 0.01}
                          ) as (http, services):
        partner = await make_partner()
        a, b = await partner.account(), await partner.account()
        headers = {"Authorization": f"Bearer {partner.key}"}

        async def send(n: int) -> Any:
            return await http.post("/graphql", headers=headers, json={
                "query": CREATE_MANY, "variables": {"inputs": [item(a, b, "1.00")
                                                               for _ in range(n)]}})

        assert (await send(3)).status_code == 200
        refused = await send(3)
        assert refused.status_code == 429
        error = refused.json()["errors"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] > 0
        assert await partner_rows(services, partner.key) == (3, 3)
        assert (await send(2)).status_code == 200
        assert await partner_rows(services, partner.key) == (5, 5)
        too_big = await send(6)
        assert too_big.status_code == 429
        error = too_big.json()["errors"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["burst"] == 5
        assert error["extensions"]["retryAfter"] > 0
        assert "at most 5 inputs" in error["message"]
        assert await partner_rows(services, partner.key) == (5, 5)


async def test_the_shared_bucket_takes_n_tokens_atomically(settings) -> None:
    """The Redis script, not only the process's buckets: another process's fresh local
    bucket (a new limiter) is full, so only the shared bucket can refuse."""
    from paystream.gateway.operations import OperationGate
    from paystream.services.app import Services

    from ._gateway import changed

    services = Services.create(changed(settings, limits={"mutation_burst": 10,
                                                         "mutation_rate_per_s": 0.01}))
    try:
        key = f"key:{uuid.uuid4()}"
        first = OperationGate(services).limiter
        assert await first.retry_after("mutation", key, 7) is None
        other = OperationGate(services).limiter  # as another API process
        wait = await other.retry_after("mutation", key, 4)
        assert wait is not None and wait > 0  # 3 left of 10
        assert await other.retry_after("mutation", key, 3) is None  # the 4 were not taken
        assert await other.retry_after("mutation", key, 1) is not None
    finally:
        await services.close()


async def test_concurrent_requests_take_the_shared_buckets_in_one_script_call(settings) -> None:
    """Requests that ask before a call to Redis goes out (or while one is out) are sent
    together, and each is answered by its own bucket's state: of eight concurrent takings
    from a shared bucket another process left four tokens in, four are let through."""
    from paystream.gateway.operations import OperationGate
    from paystream.services.app import Services

    from ._gateway import changed

    services = Services.create(changed(settings, limits={"mutation_burst": 10,
                                                         "mutation_rate_per_s": 0.01}))
    try:
        key, elsewhere = f"key:{uuid.uuid4()}", f"key:{uuid.uuid4()}"
        assert await OperationGate(services).limiter.retry_after("mutation", key, 6) is None
        limiter = OperationGate(services).limiter  # as another API process: local buckets full

        async def script_calls() -> int:
            stats = await services.limiter_redis.info("commandstats")
            return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0))
                       for c in ("evalsha", "eval"))

        before = await script_calls()
        answers = await asyncio.gather(
            *(limiter.retry_after("mutation", key) for _ in range(8)),
            limiter.retry_after("mutation", elsewhere, 10))
        # All nine asked before the first call went out: one script call took them all.
        assert await script_calls() - before == 1 == limiter.calls
        waits = answers[:8]
        assert waits.count(None) == 4
        assert all(w is not None and w > 0 for w in waits if w is not None)
        assert answers[8] is None  # another key's bucket, in the same call
        # What was refused was given back to the local bucket: it still lets 4 through.
        assert limiter.local.take(limiter._buckets["mutation"], key, 4) is None
    finally:
        await services.close()


async def test_primary_down_is_unavailable_and_nothing_is_written(settings, make_partner,
                                                                  services) -> None:
    from paystream.devstack import free_port

    partner = await make_partner()
    a, b = await partner.account(balance="5.00"), await partner.account()
    await wait_for_replay(partner.services.db)
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/paystream"
    async with app_client(settings, db={"primary_url": nowhere}) as (http, _):
        body = await gql(http, CREATE_MANY, {"inputs": [
            item(a, b, "1.00"), item(a, b, "0.001"), item(a, b, "2.00")]}, key=partner.key)
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAVAILABLE"]
    assert await partner_rows(services, partner.key) == (0, 0)


async def test_pages_below_the_bulk_answer_count_once_per_possible_input(client, make_partner
                                                                        ) -> None:
    partner = await make_partner()
    a, b = await partner.account(), await partner.account()
    body = await gql(client, "mutation($inputs: [CreatePaymentInput!]!) { createPayments("
                     "inputs: $inputs) { payment { sourceAccount { payments(first: 20) {"
                     " edges { node { id } } } } } } }", {"inputs": [item(a, b, "1.00")]},
                     key=partner.key)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert body["errors"][0]["extensions"]["limit"] == "cost"


async def test_the_typed_client_creates_payments_in_bulk(client, make_partner, watcher) -> None:
    from paystream.client import PaystreamClient, payment_input

    partner = await make_partner()
    a, b = await partner.account(balance="10.00"), await partner.account(balance="0")
    inputs = [payment_input(idempotency_key=uuid.uuid4().hex, source_account_id=a,
                            destination_account_id=b, amount=amount, currency="USD",
                            metadata={"batch": "7"})
              for amount in ("1.00", "1.001", "2.00")]
    async with PaystreamClient("http://test", partner.key, transport=client._transport) as api:
        results = await api.create_payments(inputs)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == {"code": "BAD_USER_INPUT", "field": "amount", "reason": None,
                                "message": results[1].error["message"]}
    created = [r.payment for r in results if r.payment]
    assert [p["sourceAccount"]["id"] for p in created] == [a, a]
    for payment in created:
        assert (await watcher.terminal(payment["id"]))["status"] == "SUCCEEDED"


async def test_concurrent_bulk_requests_sharing_keys_make_one_payment_per_key(
        client, make_partner, services) -> None:
    """Two calls with the same inputs, one in reverse order, at once: each key gets exactly
    one payment, both calls answer it, and neither deadlocks on the other's keys."""
    import asyncio

    partner = await make_partner()
    a, b = await partner.account(balance="50.00"), await partner.account()
    inputs = [item(a, b, "1.00") for _ in range(20)]
    forward, backward = await asyncio.gather(bulk(client, partner.key, inputs),
                                             bulk(client, partner.key, inputs[::-1]))
    ids = [r["payment"]["id"] for r in forward]
    assert [r["payment"]["id"] for r in backward] == ids[::-1]
    assert len(set(ids)) == 20
    assert await partner_rows(services, partner.key) == (20, 20)


async def test_variables_that_are_not_an_object_are_refused_not_failed(client, make_partner
                                                                        ) -> None:
    """The gateway reads the batch's size from the variables: a client's list there is a
    400, as for any operation, never a server error."""
    partner = await make_partner()
    response = await client.post("/graphql", json={"query": CREATE_MANY, "variables": [1, 2]},
                                 headers={"Authorization": f"Bearer {partner.key}"})
    assert response.status_code == 400
    assert "variables" in response.text
