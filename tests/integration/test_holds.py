"""Holds on the real servers: authorize (capture false), then capture (whole or partial),
cancel, or expiry; the refusals of DESIGN.md 2a; the ledger verifies after each."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from paystream.client import PAYMENT_STATUS, GraphQLErrors, PaystreamClient, Subscriptions

from ..reliability.invariants import assert_ledger_verified
from .conftest import ApiProcess, StatusWatcher, gql, start_api, stop_process

pytestmark = pytest.mark.integration

FIELDS = """id status amount capturedAmount failureReason authorizationExpiresAt
  sourceAccount { balance availableBalance }"""
CREATE = f"mutation($input: CreatePaymentInput!) {{ createPayment(input: $input) {{ {FIELDS} }} }}"
CAPTURE = f"mutation($input: CapturePaymentInput!) {{ capturePayment(input: $input) {{ {FIELDS} }} }}"
CANCEL = f"mutation($input: CancelPaymentInput!) {{ cancelPayment(input: $input) {{ {FIELDS} }} }}"
ACCOUNT = "query($id: ID!) { account(id: $id) { balance availableBalance } }"


@pytest.fixture
async def watcher(migrated, worker):  # type: ignore[no-untyped-def]
    watcher = StatusWatcher(migrated)
    await watcher.start()
    yield watcher
    await watcher.stop()


def hold_input(source: str, destination: str, amount: str, *, capture: bool = False,
               ttl: int | None = None, key: str | None = None) -> dict[str, object]:
    return {"input": {"idempotencyKey": key or uuid.uuid4().hex, "sourceAccountId": source,
                      "destinationAccountId": destination, "amount": amount, "currency": "USD",
                      "capture": capture, "authorizationTtlSeconds": ttl}}


async def authorize(client, partner, watcher, source, destination, amount="40.00",
                    ttl=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = await gql(client, CREATE, hold_input(source, destination, amount, ttl=ttl),
                     key=partner.key)
    created = body["data"]["createPayment"]
    assert created["status"] == "PENDING"
    event = await watcher.status(created["id"], "AUTHORIZED")
    return {"id": created["id"], "event": event}


async def balances(client, partner, account: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    # From the cache the worker wrote (read-your-writes), whatever the replica's lag.
    shown = (await gql(client, ACCOUNT, {"id": account}, key=partner.key))["data"]["account"]
    return shown["balance"], shown["availableBalance"]


def reason(body: dict[str, Any]) -> tuple[str, str | None]:
    extensions = body["errors"][0]["extensions"]
    return extensions["code"], extensions.get("reason")


async def test_authorization_holds_the_amount_without_posting_it(
        client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    held = await authorize(client, partner, watcher, source, destination, "40.00")
    snapshot = held["event"]["payment"]
    assert snapshot["authorization_expires_at"] is not None
    assert await balances(client, partner, source) == ("100.00", "60.00")
    assert await balances(client, partner, destination) == ("0.00", "0.00")
    async with services.db.primary.connect() as conn:
        entries = (await conn.execute(text("SELECT count(*) FROM ledger_entries WHERE payment_id"
                                           " = :p"), {"p": uuid.UUID(held["id"])})).scalar()
        hold = (await conn.execute(text("SELECT status, amount_minor FROM holds WHERE payment_id"
                                        " = :p"), {"p": uuid.UUID(held["id"])})).one()
    assert entries == 0 and tuple(hold) == ("OPEN", 4000)
    # Only the available balance may be spent: 60.01 fails, the hold stays.
    spend = await gql(client, CREATE, hold_input(source, destination, "60.01", capture=True),
                      key=partner.key)
    failed = await watcher.terminal(spend["data"]["createPayment"]["id"])
    assert (failed["status"], failed["failure_reason"]) == ("FAILED", "INSUFFICIENT_FUNDS")
    await assert_ledger_verified(services)


async def test_full_capture_posts_the_authorization(client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    held = await authorize(client, partner, watcher, source, destination, "40.00")
    answer = (await gql(client, CAPTURE, {"input": {"paymentId": held["id"]}},
                        key=partner.key))["data"]["capturePayment"]
    assert answer["status"] == "AUTHORIZED"  # accepted: the payment as it stands
    done = await watcher.terminal(held["id"])
    assert done["status"] == "SUCCEEDED" and done["payment"]["captured_minor"] == 4000
    assert (done["source_balance_minor"], done["destination_balance_minor"]) == (6000, 4000)
    assert await balances(client, partner, source) == ("60.00", "60.00")
    shown = (await gql(client, "query($id: ID!) { payment(id: $id) { status capturedAmount "
                       "authorizationExpiresAt } }", {"id": held["id"]}, key=partner.key))
    assert shown["data"]["payment"] == {"status": "SUCCEEDED", "capturedAmount": "40.00",
                                        "authorizationExpiresAt": None}
    # Captured already: the asked-for end state, returned unchanged.
    again = await gql(client, CAPTURE, {"input": {"paymentId": held["id"]}}, key=partner.key)
    assert again["data"]["capturePayment"]["status"] == "SUCCEEDED"
    await assert_ledger_verified(services)


async def test_partial_capture_releases_the_rest(client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    held = await authorize(client, partner, watcher, source, destination, "50.00")
    await gql(client, CAPTURE, {"input": {"paymentId": held["id"], "amount": "30.00"}},
              key=partner.key)
    done = await watcher.terminal(held["id"])
    assert done["status"] == "SUCCEEDED"
    assert (done["source_balance_minor"], done["destination_balance_minor"]) == (7000, 3000)
    assert await balances(client, partner, source) == ("70.00", "70.00")
    async with services.db.primary.connect() as conn:
        entries = (await conn.execute(text(
            "SELECT kind, account_id::text, amount_minor FROM ledger_entries WHERE payment_id = :p"
        ), {"p": uuid.UUID(held["id"])})).all()
    assert sorted(entries) == sorted([("CAPTURE", source, -3000), ("CAPTURE", destination, 3000)])
    shown = await gql(client, "query($id: ID!) { payment(id: $id) { capturedAmount amount } }",
                      {"id": held["id"]}, key=partner.key)
    assert shown["data"]["payment"] == {"capturedAmount": "30.00", "amount": "50.00"}
    await assert_ledger_verified(services)


async def test_cancel_releases_the_hold(client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    held = await authorize(client, partner, watcher, source, destination, "40.00")
    answer = await gql(client, CANCEL, {"input": {"paymentId": held["id"]}}, key=partner.key)
    assert answer["data"]["cancelPayment"]["status"] == "AUTHORIZED"
    done = await watcher.terminal(held["id"])
    assert (done["status"], done["failure_reason"]) == ("CANCELED", None)
    assert await balances(client, partner, source) == ("100.00", "100.00")
    again = await gql(client, CANCEL, {"input": {"paymentId": held["id"]}}, key=partner.key)
    assert again["data"]["cancelPayment"]["status"] == "CANCELED"
    # Capture of a CANCELED payment is refused.
    refused = await gql(client, CAPTURE, {"input": {"paymentId": held["id"]}}, key=partner.key)
    assert reason(refused) == ("BAD_USER_INPUT", "PAYMENT_NOT_CAPTURABLE")
    await assert_ledger_verified(services)


async def test_capture_queued_before_the_hold_is_placed_follows_it(
        client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    body = await gql(client, CREATE, hold_input(source, destination, "25.00"), key=partner.key)
    payment_id = body["data"]["createPayment"]["id"]
    # Straight after acceptance: the capture is queued behind the authorization (same key).
    await gql(client, CAPTURE, {"input": {"paymentId": payment_id}}, key=partner.key)
    authorized = await watcher.status(payment_id, "AUTHORIZED")
    done = await watcher.terminal(payment_id)
    assert done["status"] == "SUCCEEDED" and done["version"] > authorized["version"]
    await assert_ledger_verified(services)


async def test_refusals(client, make_partner, watcher, services) -> None:
    partner, other = await make_partner(), await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    transfer = await gql(client, CREATE, hold_input(source, destination, "5.00", capture=True),
                         key=partner.key)
    transfer_id = transfer["data"]["createPayment"]["id"]
    assert (await watcher.terminal(transfer_id))["status"] == "SUCCEEDED"
    # A SUCCEEDED transfer was never authorized: not capturable, not cancelable.
    refused = await gql(client, CAPTURE, {"input": {"paymentId": transfer_id}}, key=partner.key)
    assert reason(refused) == ("BAD_USER_INPUT", "PAYMENT_NOT_CAPTURABLE")
    refused = await gql(client, CANCEL, {"input": {"paymentId": transfer_id}}, key=partner.key)
    assert reason(refused) == ("BAD_USER_INPUT", "PAYMENT_NOT_AUTHORIZED")

    held = await authorize(client, partner, watcher, source, destination, "40.00")
    above = await gql(client, CAPTURE, {"input": {"paymentId": held["id"], "amount": "40.01"}},
                      key=partner.key)
    assert reason(above) == ("BAD_USER_INPUT", "CAPTURE_EXCEEDS_AUTHORIZATION")
    assert above["errors"][0]["extensions"]["field"] == "amount"
    bad_amount = await gql(client, CAPTURE, {"input": {"paymentId": held["id"], "amount": "1.001"}},
                           key=partner.key)
    assert reason(bad_amount) == ("BAD_USER_INPUT", None)
    # Foreign ids look exactly like missing ones (to the destination's owner too).
    missing = await gql(client, CAPTURE, {"input": {"paymentId": str(uuid.uuid4())}},
                        key=partner.key)
    foreign = await gql(client, CAPTURE, {"input": {"paymentId": held["id"]}}, key=other.key)
    malformed = await gql(client, CANCEL, {"input": {"paymentId": "nope"}}, key=other.key)
    for body in (missing, foreign, malformed):
        assert body["errors"][0]["message"] == "no such payment"
        assert reason(body) == ("NOT_FOUND", None)
    # A capture is accepted once; a different one while it is queued is refused, the same
    # one returns the payment as it stands.
    first = await gql(client, CAPTURE, {"input": {"paymentId": held["id"], "amount": "10.00"}},
                      key=partner.key)
    assert "errors" not in first
    same = await gql(client, CAPTURE, {"input": {"paymentId": held["id"], "amount": "10.00"}},
                     key=partner.key)
    assert "errors" not in same
    assert (await watcher.terminal(held["id"]))["status"] == "SUCCEEDED"
    assert reason(await gql(client, CANCEL, {"input": {"paymentId": held["id"]}},
                            key=partner.key)) == ("BAD_USER_INPUT", "PAYMENT_NOT_AUTHORIZED")
    # Bad TTLs name the field.
    for ttl, capture in ((0, False), (30 * 86400 + 1, False), (60, True)):
        body = await gql(client, CREATE, hold_input(source, destination, "1.00", ttl=ttl,
                                                    capture=capture), key=partner.key)
        assert body["errors"][0]["extensions"]["field"] == "authorizationTtlSeconds"
    await assert_ledger_verified(services)


async def test_authorization_expires_after_its_ttl(client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    held = await authorize(client, partner, watcher, source, destination, "40.00", ttl=1)
    done = await watcher.terminal(held["id"], timeout=15)
    assert (done["status"], done["failure_reason"]) == ("CANCELED", "AUTHORIZATION_EXPIRED")
    assert done["source_balance_minor"] == 10000
    assert await balances(client, partner, source) == ("100.00", "100.00")
    late = await gql(client, CAPTURE, {"input": {"paymentId": held["id"]}}, key=partner.key)
    assert reason(late) == ("BAD_USER_INPUT", "PAYMENT_NOT_CAPTURABLE")
    await assert_ledger_verified(services)


@pytest.fixture
async def second_api(server_env: dict[str, str], api: ApiProcess) -> Any:
    process = start_api(server_env)
    try:
        await process.wait_ready()
        yield process
    finally:
        stop_process(process.process)


async def collect(stream: Any, timeout: float = 30.0) -> list[str]:
    async def run() -> list[str]:
        return [data["paymentStatus"]["status"] async for data in stream]
    return await asyncio.wait_for(run(), timeout)


@pytest.mark.parametrize("end", ["capture", "cancel"])
async def test_subscribers_on_two_processes_see_authorized_then_the_end_in_order(
        api: ApiProcess, second_api: ApiProcess, worker: subprocess.Popen[bytes],
        make_partner: Any, watcher: StatusWatcher, end: str) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    async with PaystreamClient(api.url, partner.key) as http, \
            Subscriptions(api.ws_url, partner.key) as one, \
            Subscriptions(second_api.ws_url, partner.key) as two:
        payment = await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount="20.00", currency="USD", capture=False)
        streams = [ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}) for ws in (one, two)]
        firsts = [(await anext(s))["paymentStatus"]["status"] for s in streams]
        await watcher.status(payment["id"], "AUTHORIZED")
        # The subscription stays open on AUTHORIZED; the end completes it.
        if end == "capture":
            await http.capture_payment(payment["id"])
        else:
            await http.cancel_payment(payment["id"])
        rests = [await collect(s) for s in streams]
        with pytest.raises(GraphQLErrors):
            await http.cancel_payment(payment["id"]) if end == "capture" else \
                await http.capture_payment(payment["id"])
    final = "SUCCEEDED" if end == "capture" else "CANCELED"
    for first, rest in zip(firsts, rests, strict=True):
        seen = [first, *rest]
        # A subscriber that started after the hold was placed sees AUTHORIZED as its first state.
        assert seen in (["PENDING", "AUTHORIZED", final], ["AUTHORIZED", final]), seen


async def test_the_readme_partner_flow_authorize_capture_refund(
        api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any,
        watcher: StatusWatcher, services: Any) -> None:
    """README's example with the typed client, asserting what it prints."""
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    async with PaystreamClient(api.url, partner.key) as http, http.subscriptions() as ws:
        payment = await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount="80.00", currency="USD",
            capture=False, authorization_ttl_seconds=3 * 86400)
        updates = ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]})
        async for update in updates:
            if update["paymentStatus"]["status"] != "PENDING":
                break
        assert update["paymentStatus"]["status"] == "AUTHORIZED"
        assert update["paymentStatus"]["sourceAccount"]["availableBalance"] == "20.00"
        await http.capture_payment(payment["id"], amount="60.00")
        rest = [u["paymentStatus"] async for u in updates]
        assert [(u["status"], u["capturedAmount"]) for u in rest] == [("SUCCEEDED", "60.00")]
        refund = await http.refund_payment(idempotency_key=uuid.uuid4().hex,
                                           payment_id=payment["id"], amount="15.00",
                                           reason="item returned")
        assert refund["status"] == "PENDING" and refund["payment"]["id"] == payment["id"]
        event = await watcher.refund(payment["id"], refund["id"])
        assert event["refund"]["status"] == "SUCCEEDED"  # type: ignore[index]
        account = await http.create_account(idempotency_key=uuid.uuid4().hex, name="Refunds",
                                            currency="USD")
        assert account["balance"] == "0.00"
    await assert_ledger_verified(services)


async def test_account_activity_sees_the_hold_its_capture_and_a_refund(
        api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any) -> None:
    from paystream.client import ACCOUNT_ACTIVITY

    partner, payee = await make_partner(), await make_partner()
    source, destination = await partner.account(balance="100.00"), await payee.account("USD", "0")
    async with PaystreamClient(api.url, partner.key) as http, \
            Subscriptions(api.ws_url, payee.key) as ws:
        stream = ws.results(await ws.start(ACCOUNT_ACTIVITY, {"id": destination}))
        payment = await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount="30.00", currency="USD", capture=False)
        seen: list[tuple[str, str | None, str | None]] = []

        async def follow() -> None:
            async for data in stream:
                update = data["accountActivity"]
                assert update["id"] == payment["id"]
                seen.append((update["status"], update["capturedAmount"],
                             update["destinationAccount"]["balance"]))
                if update["status"] == "AUTHORIZED":
                    await http.capture_payment(payment["id"])
                elif update["status"] == "SUCCEEDED" and len(
                        [s for s in seen if s[0] == "SUCCEEDED"]) == 1:
                    await http.refund_payment(idempotency_key=uuid.uuid4().hex,
                                              payment_id=payment["id"], amount="10.00")
                elif update["destinationAccount"]["balance"] == "20.00":
                    return

        async with asyncio.timeout(30):
            await follow()
    # Each change once, in order: the capture, the refund's acceptance (refund.pending, the
    # balance untouched) and its posting; the payee sees its own balance throughout.
    statuses = [s for s, _, _ in seen]
    assert statuses in (["PENDING", "AUTHORIZED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"],
                        ["AUTHORIZED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"])
    assert seen[-3:] == [("SUCCEEDED", "30.00", "30.00"), ("SUCCEEDED", "30.00", "30.00"),
                         ("SUCCEEDED", "30.00", "20.00")]


async def test_an_expired_authorization_is_not_captured_before_the_sweep_runs(
        client, make_partner, watcher, worker, services) -> None:
    from datetime import UTC, datetime

    from .test_subscriptions import held as stopped

    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account("USD", "0")
    authorized = await authorize(client, partner, watcher, source, destination, "10.00", ttl=1)
    expires = datetime.fromisoformat(str(authorized["event"]["payment"]["authorization_expires_at"]))
    with stopped(worker):  # no sweep meanwhile
        # Waiting for the clock to pass the expiry, not for an event.
        await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
        late = await gql(client, CAPTURE, {"input": {"paymentId": authorized["id"]}},
                         key=partner.key)
        assert reason(late) == ("BAD_USER_INPUT", "PAYMENT_NOT_CAPTURABLE")
    done = await watcher.terminal(authorized["id"])
    assert (done["status"], done["failure_reason"]) == ("CANCELED", "AUTHORIZATION_EXPIRED")
    await assert_ledger_verified(services)
