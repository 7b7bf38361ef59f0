"""Refunds on the real servers: whole and partial, their sum bounded by what the payment
moved (also under concurrency), FAILED when the destination no longer holds the money; the
ledger verifies after each."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from ..reliability.invariants import assert_ledger_verified
from .conftest import StatusWatcher, gql

pytestmark = pytest.mark.integration

CREATE = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"""
CAPTURE = """mutation($input: CapturePaymentInput!) { capturePayment(input: $input) { id } }"""
REFUND = """
mutation($input: RefundPaymentInput!) {
  refundPayment(input: $input) { id status amount reason failureReason payment { id } }
}
"""
PAYMENT = """
query($id: ID!) { payment(id: $id) { status amountRefunded
  refunds { id status amount reason failureReason } } }
"""


@pytest.fixture
async def watcher(migrated, worker):  # type: ignore[no-untyped-def]
    watcher = StatusWatcher(migrated)
    await watcher.start()
    yield watcher
    await watcher.stop()


async def paid(client, partner, watcher, source, destination, amount="100.00",
               capture=True) -> str:  # type: ignore[no-untyped-def]
    body = await gql(client, CREATE, {"input": {
        "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
        "destinationAccountId": destination, "amount": amount, "currency": "USD",
        "capture": capture}}, key=partner.key)
    payment_id = body["data"]["createPayment"]["id"]
    event = await watcher.status(payment_id, "SUCCEEDED" if capture else "AUTHORIZED")
    assert event["status"] in ("SUCCEEDED", "AUTHORIZED")
    return str(payment_id)


def refund_input(payment_id: str, amount: str | None = None, key: str | None = None,
                 reason: str | None = None) -> dict[str, object]:
    return {"input": {"idempotencyKey": key or uuid.uuid4().hex, "paymentId": payment_id,
                      "amount": amount, "reason": reason}}


async def refund(client, partner, payment_id, amount=None, **kw) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return await gql(client, REFUND, refund_input(payment_id, amount, **kw), key=partner.key)


def refusal(body: dict[str, Any]) -> tuple[str, str | None]:
    extensions = body["errors"][0]["extensions"]
    return extensions["code"], extensions.get("reason")


async def balances(services, *accounts: str) -> list[int]:  # type: ignore[no-untyped-def]
    async with services.db.primary.connect() as conn:
        rows = dict((await conn.execute(text(
            "SELECT id::text, balance_minor FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(a) for a in accounts]})).all())
    return [rows[a] for a in accounts]


async def test_full_refund_pays_the_payment_back(client, make_partner, watcher, services) -> None:
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    payment_id = await paid(client, payer, watcher, source, destination, "40.00")
    body = await refund(client, payer, payment_id, reason="returned goods")
    created = body["data"]["refundPayment"]
    assert (created["status"], created["amount"], created["reason"]) == (
        "PENDING", "40.00", "returned goods")
    assert created["payment"]["id"] == payment_id
    event = await watcher.refund(payment_id, created["id"])
    assert event["refund"]["status"] == "SUCCEEDED"  # type: ignore[index]
    assert (event["source_balance_minor"], event["destination_balance_minor"]) == (10000, 0)
    assert await balances(services, source, destination) == [10000, 0]
    shown = (await gql(client, PAYMENT, {"id": payment_id}, key=payer.key))["data"]["payment"]
    assert shown["status"] == "SUCCEEDED" and shown["amountRefunded"] == "40.00"
    assert [(r["id"], r["status"], r["amount"]) for r in shown["refunds"]] == [
        (created["id"], "SUCCEEDED", "40.00")]
    async with services.db.primary.connect() as conn:
        entries = (await conn.execute(text(
            "SELECT kind, account_id::text, amount_minor FROM ledger_entries WHERE posting_id = :r"
        ), {"r": uuid.UUID(created["id"])})).all()
    assert sorted(entries) == sorted([("REFUND", destination, -4000), ("REFUND", source, 4000)])
    await assert_ledger_verified(services)


async def test_partial_refunds_never_exceed_the_payment(client, make_partner, watcher,
                                                        services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    payment_id = await paid(client, partner, watcher, source, destination, "50.00")
    first = (await refund(client, partner, payment_id, "30.00"))["data"]["refundPayment"]
    second = (await refund(client, partner, payment_id, "15.00"))["data"]["refundPayment"]
    above = await refund(client, partner, payment_id, "5.01")
    assert refusal(above) == ("BAD_USER_INPUT", "REFUND_EXCEEDS_PAYMENT")
    rest = (await refund(client, partner, payment_id))["data"]["refundPayment"]
    assert rest["amount"] == "5.00"  # omitted: what is left
    for made in (first, second, rest):
        event = await watcher.refund(payment_id, made["id"])
        assert event["refund"]["status"] == "SUCCEEDED"  # type: ignore[index]
    nothing_left = await refund(client, partner, payment_id)
    assert refusal(nothing_left) == ("BAD_USER_INPUT", "REFUND_EXCEEDS_PAYMENT")
    shown = (await gql(client, PAYMENT, {"id": payment_id}, key=partner.key))["data"]["payment"]
    assert shown["amountRefunded"] == "50.00" and len(shown["refunds"]) == 3
    await assert_ledger_verified(services)


async def test_a_partly_captured_payment_refunds_at_most_the_capture(
        client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    payment_id = await paid(client, partner, watcher, source, destination, "50.00", capture=False)
    not_yet = await refund(client, partner, payment_id)
    assert refusal(not_yet) == ("BAD_USER_INPUT", "PAYMENT_NOT_REFUNDABLE")
    await gql(client, CAPTURE, {"input": {"paymentId": payment_id, "amount": "20.00"}},
              key=partner.key)
    assert (await watcher.terminal(payment_id))["status"] == "SUCCEEDED"
    above = await refund(client, partner, payment_id, "20.01")
    assert refusal(above) == ("BAD_USER_INPUT", "REFUND_EXCEEDS_PAYMENT")
    whole = (await refund(client, partner, payment_id))["data"]["refundPayment"]
    assert whole["amount"] == "20.00"
    await watcher.refund(payment_id, whole["id"])
    await assert_ledger_verified(services)


async def test_two_concurrent_partial_refunds_exceeding_the_payment_exactly_one_succeeds(
        client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    payment_id = await paid(client, partner, watcher, source, destination, "100.00")
    bodies = await asyncio.gather(refund(client, partner, payment_id, "60.00"),
                                  refund(client, partner, payment_id, "60.00"))
    accepted = [b["data"]["refundPayment"] for b in bodies if "errors" not in b]
    refused = [b for b in bodies if "errors" in b]
    assert len(accepted) == 1 and len(refused) == 1
    assert refusal(refused[0]) == ("BAD_USER_INPUT", "REFUND_EXCEEDS_PAYMENT")
    event = await watcher.refund(payment_id, accepted[0]["id"])
    assert event["refund"]["status"] == "SUCCEEDED"  # type: ignore[index]
    assert await balances(services, source, destination) == [6000, 4000]
    await assert_ledger_verified(services)


async def test_refund_fails_when_the_destination_no_longer_holds_the_money(
        client, make_partner, watcher, services) -> None:
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    elsewhere = await payee.account(balance="0")
    payment_id = await paid(client, payer, watcher, source, destination, "50.00")
    await paid(client, payee, watcher, destination, elsewhere, "30.00")  # spent most of it
    made = (await refund(client, payer, payment_id))["data"]["refundPayment"]
    assert made["status"] == "PENDING"
    event = await watcher.refund(payment_id, made["id"])
    assert event["refund"]["status"] == "FAILED"  # type: ignore[index]
    assert event["refund"]["failure_reason"] == "INSUFFICIENT_FUNDS"  # type: ignore[index]
    assert await balances(services, source, destination) == [5000, 2000]
    shown = (await gql(client, PAYMENT, {"id": payment_id}, key=payer.key))["data"]["payment"]
    assert shown["amountRefunded"] == "0.00"
    assert [(r["status"], r["failureReason"]) for r in shown["refunds"]] == [
        ("FAILED", "INSUFFICIENT_FUNDS")]
    # A FAILED refund claims nothing: what the destination still holds can be refunded.
    retry = (await refund(client, payer, payment_id, "20.00"))["data"]["refundPayment"]
    assert (await watcher.refund(payment_id, retry["id"]))["refund"]["status"] == "SUCCEEDED"  # type: ignore[index]
    await assert_ledger_verified(services)


async def test_refund_racing_the_destinations_outgoing_payment(
        client, make_partner, watcher, services) -> None:
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    elsewhere = await payee.account(balance="0")
    payment_id = await paid(client, payer, watcher, source, destination, "50.00")
    outgoing_body, refund_body = await asyncio.gather(
        gql(client, CREATE, {"input": {
            "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": destination,
            "destinationAccountId": elsewhere, "amount": "50.00", "currency": "USD"}},
            key=payee.key),
        refund(client, payer, payment_id))
    outgoing_id = outgoing_body["data"]["createPayment"]["id"]
    refund_id = refund_body["data"]["refundPayment"]["id"]
    outgoing = await watcher.terminal(outgoing_id)
    refunded = (await watcher.refund(payment_id, refund_id))["refund"]
    # The destination held 50.00 once: exactly one of the two took it.
    outcomes = sorted([outgoing["status"], refunded["status"]])  # type: ignore[index]
    assert outcomes == ["FAILED", "SUCCEEDED"]
    assert sum(await balances(services, source, destination, elsewhere)) == 10000
    assert (await balances(services, destination)) == [0]
    await assert_ledger_verified(services)


async def test_refund_refusals_and_idempotency(client, make_partner, watcher, services) -> None:
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="10.00"), await payee.account(balance="0")
    failed_body = await gql(client, CREATE, {"input": {
        "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
        "destinationAccountId": destination, "amount": "20.00", "currency": "USD"}},
        key=payer.key)
    failed_id = failed_body["data"]["createPayment"]["id"]
    assert (await watcher.terminal(failed_id))["status"] == "FAILED"
    assert refusal(await refund(client, payer, failed_id)) == (
        "BAD_USER_INPUT", "PAYMENT_NOT_REFUNDABLE")
    payment_id = await paid(client, payer, watcher, source, destination, "5.00")
    # Only the source account's owner may refund: for the payee the payment does not exist.
    for body in (await refund(client, payee, payment_id),
                 await refund(client, payer, str(uuid.uuid4())),
                 await refund(client, payer, "not-an-id")):
        assert refusal(body) == ("NOT_FOUND", None)
        assert body["errors"][0]["message"] == "no such payment"
    assert refusal(await refund(client, payer, payment_id, "0.001"))[0] == "BAD_USER_INPUT"
    assert refusal(await refund(client, payer, payment_id, "1.00", reason="x" * 141))[0] == \
        "BAD_USER_INPUT"
    first = (await refund(client, payer, payment_id, "5.00", key="r-1"))["data"]["refundPayment"]
    # A retry is answered with the same refund even though nothing is left to refund now.
    again = (await refund(client, payer, payment_id, "5.00", key="r-1"))["data"]["refundPayment"]
    assert again["id"] == first["id"]
    conflict = await refund(client, payer, payment_id, "4.00", key="r-1")
    assert refusal(conflict) == ("IDEMPOTENCY_CONFLICT", None)
    await watcher.refund(payment_id, first["id"])
    await assert_ledger_verified(services)
