"""Webhooks on the real servers, to a real receiver (uvicorn on loopback): signed deliveries
that verify and show each partner what its query shows; a receiver down, then failing, then
up gets every event in version order; a sender SIGKILLed mid-retry leaves its schedule to the
next; private addresses refused at registration and at delivery after a DNS change; a
failing endpoint is given up and disabled without holding up another."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from paystream.client import WebhookSignatureError, verify_signature
from paystream.config import Settings
from paystream.devstack import free_port
from paystream.domain.errors import BadUserInput
from paystream.domain.webhooks import event_id
from paystream.metrics import REGISTRY
from paystream.services.webhooks import WebhookService
from paystream.webhooks.sender import run_sender
from paystream.webhooks.urls import Resolver

from ._receiver import Received, Receiver
from .conftest import LOG_DIR, StatusWatcher, gql

pytestmark = pytest.mark.integration

CREATE_ENDPOINT = """
mutation($input: CreateWebhookEndpointInput!) {
  createWebhookEndpoint(input: $input) { secret endpoint { id url events status createdAt } }
}"""
ROTATE = "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret endpoint { id } } }"
DELETE = "mutation($id: ID!) { deleteWebhookEndpoint(id: $id) }"
ENDPOINTS = "{ webhookEndpoints { id url events status createdAt } }"
DELIVERIES = """
query($id: ID!, $first: Int, $after: String) {
  webhookDeliveries(endpointId: $id, first: $first, after: $after) {
    id eventId attempt responseStatus error at }
}"""
CREATE_PAYMENT = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id } }"""
CAPTURE = """mutation($input: CapturePaymentInput!) { capturePayment(input: $input) { id } }"""
ACCOUNT = "id name currency balance availableBalance"
PAYMENT_VIEW = f"""
query($id: ID!) {{ payment(id: $id) {{
  id status amount currency sourceAccount {{ {ACCOUNT} }} destinationAccount {{ {ACCOUNT} }}
  reference failureReason createdAt updatedAt capturedAmount authorizationExpiresAt
  amountRefunded }} }}"""

# Retries in tenths of a second instead of seconds to hours.
FAST = {"retry_base_s": 0.2, "retry_max_s": 1.0, "request_timeout_s": 2.0, "lease_s": 3.0,
        "resolve_timeout_s": 0.5, "poll_interval_s": 0.1}


@pytest.fixture
async def watcher(migrated, worker):  # type: ignore[no-untyped-def]
    watcher = StatusWatcher(migrated)
    await watcher.start()
    yield watcher
    await watcher.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    yield receiver
    await receiver.stop()


def fast_settings(settings: Settings, **webhooks: object) -> Settings:
    options = {**FAST, "group": f"webhooks-test-{uuid.uuid4().hex[:8]}", **webhooks}
    return settings.model_copy(update={"webhooks": settings.webhooks.model_copy(update=options)})


@asynccontextmanager
async def sender(settings: Settings, resolver: Resolver | None = None) -> AsyncIterator[None]:
    """A sender in this process (its own consumer group, fast retries)."""
    task = asyncio.create_task(run_sender(settings, resolver=resolver))
    try:
        yield
    finally:
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results


def sender_process(env: dict[str, str], group: str) -> subprocess.Popen[bytes]:
    extra = {f"PAYSTREAM_WEBHOOKS__{name.upper()}": str(value) for name, value in FAST.items()}
    log_path = f"{LOG_DIR}/webhooks-{uuid.uuid4().hex[:8]}.log"
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "paystream.cli", "webhooks"],
            env={**env, **extra, "PAYSTREAM_WEBHOOKS__GROUP": group},
            stdout=log_file, stderr=subprocess.STDOUT)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Until ``check()`` holds: for state another process writes to the database, which
    offers nothing to await."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def endpoint(client, partner, url: str, events: list[str] | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = await gql(client, CREATE_ENDPOINT, {"input": {"url": url, "events": events}},
                     key=partner.key)
    assert "errors" not in body, body
    return dict(body["data"]["createWebhookEndpoint"])  # type: ignore[index]


async def pay(client, partner, source: str, destination: str, amount: str = "12.50",
              capture: bool = True) -> str:  # type: ignore[no-untyped-def]
    body = await gql(client, CREATE_PAYMENT, {"input": {
        "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
        "destinationAccountId": destination, "amount": amount, "currency": "USD",
        "capture": capture}}, key=partner.key)
    assert "errors" not in body, body
    return str(body["data"]["createPayment"]["id"])  # type: ignore[index]


def of_type(kind: str, payment_id: str, path: str | None = None
            ) -> Callable[[list[Received]], bool]:
    def found(requests: list[Received]) -> bool:
        return any(r.answered < 300 and r.json["type"] == kind
                   and r.json["data"].get("id") == payment_id
                   and (path is None or r.path == path) for r in requests)
    return found


def the(requests: list[Received], kind: str, payment_id: str, path: str) -> Received:
    return next(r for r in requests if r.answered < 300 and r.path == path
                and r.json["type"] == kind and r.json["data"]["id"] == payment_id)


async def schedule_rows(services, endpoint_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    async with services.db.primary.connect() as conn:
        rows = await conn.execute(text(
            "SELECT event_id::text, payment_id::text, version, state, attempts,"
            " state = 'PENDING' AND next_attempt_at = 'infinity' AS held FROM webhook_events"
            " WHERE endpoint_id = :e ORDER BY id"), {"e": uuid.UUID(endpoint_id)})
        return [dict(r._mapping) for r in rows]


async def test_signed_deliveries_show_each_partner_its_own_view(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    await receiver.start()
    payer_hook = await endpoint(client, payer, receiver.url("payer"))
    payee_hook = await endpoint(client, payee, receiver.url("payee"),
                                events=["payment.succeeded", "payment.failed"])
    assert payer_hook["secret"].startswith("whsec_") and payer_hook["secret"] != payee_hook["secret"]
    assert payee_hook["endpoint"]["events"] == ["payment.succeeded", "payment.failed"]
    assert payer_hook["endpoint"]["status"] == "ENABLED"

    async with sender(fast_settings(migrated)):
        payment_id = await pay(client, payer, source, destination)
        requests = await receiver.wait_for(lambda rs: of_type("payment.succeeded", payment_id,
                                                              "payer")(rs)
                                           and of_type("payment.succeeded", payment_id,
                                                       "payee")(rs))
        for path, hook, partner in (("payer", payer_hook, payer), ("payee", payee_hook, payee)):
            request = the(requests, "payment.succeeded", payment_id, path)
            verify_signature(hook["secret"], request.headers["paystream-signature"], request.body)
            with pytest.raises(WebhookSignatureError):
                other = payee_hook if hook is payer_hook else payer_hook
                verify_signature(other["secret"], request.headers["paystream-signature"],
                                 request.body)
            body = request.json
            assert request.headers["paystream-event-id"] == body["id"]
            assert set(body) == {"id", "type", "createdAt", "cursor", "data"}
            # Exactly what this partner's own query shows (nothing changed since).
            query = await gql(client, PAYMENT_VIEW, {"id": payment_id}, key=partner.key)
            assert body["data"] == query["data"]["payment"]  # type: ignore[index]
        payer_view = the(requests, "payment.succeeded", payment_id, "payer").json["data"]
        payee_view = the(requests, "payment.succeeded", payment_id, "payee").json["data"]
        assert payer_view["sourceAccount"]["balance"] == "87.50"
        assert payer_view["destinationAccount"]["balance"] is None
        assert payee_view["sourceAccount"]["balance"] is None
        assert payee_view["sourceAccount"]["name"] == "acct"
        assert payee_view["destinationAccount"]["balance"] == "12.50"
        # The payee asked for terminal events only.
        assert {r.json["type"] for r in requests if r.path == "payee"} == {"payment.succeeded"}

        # Rotation: both secrets sign until the old one expires.
        rotated = (await gql(client, ROTATE, {"id": payer_hook["endpoint"]["id"]},
                             key=payer.key))["data"]["rotateWebhookSecret"]  # type: ignore[index]
        assert rotated["secret"] not in (payer_hook["secret"], None)
        second = await pay(client, payer, source, destination, "1.00")
        requests = await receiver.wait_for(of_type("payment.succeeded", second, "payer"))
        request = the(requests, "payment.succeeded", second, "payer")
        header = request.headers["paystream-signature"]
        assert header.count("v1=") == 2
        verify_signature(rotated["secret"], header, request.body)
        verify_signature(payer_hook["secret"], header, request.body)

        async def settled() -> bool:
            rows = await schedule_rows(services, payer_hook["endpoint"]["id"])
            return all(r["state"] == "DELIVERED" for r in rows)
        await eventually(settled)  # recorded in the log before the sender stops

    # The attempt log, newest first, paged by id.
    log = (await gql(client, DELIVERIES, {"id": payer_hook["endpoint"]["id"]},
                     key=payer.key))["data"]["webhookDeliveries"]  # type: ignore[index]
    delivered = [r for r in receiver.requests if r.path == "payer"]
    assert {d["eventId"] for d in log} == {r.json["id"] for r in delivered}
    assert all(d["responseStatus"] == 200 and d["error"] is None and d["attempt"] == 1
               for d in log)
    assert [int(d["id"]) for d in log] == sorted((int(d["id"]) for d in log), reverse=True)
    page = (await gql(client, DELIVERIES, {"id": payer_hook["endpoint"]["id"], "first": 1,
                                           "after": log[0]["id"]},
                      key=payer.key))["data"]["webhookDeliveries"]  # type: ignore[index]
    assert page == log[1:2]
    listed = (await gql(client, ENDPOINTS, key=payee.key))["data"]["webhookEndpoints"]  # type: ignore[index]
    assert [e["id"] for e in listed] == [payee_hook["endpoint"]["id"]]


async def test_endpoint_rules_scopes_and_foreign_endpoints(client, make_partner, services) -> None:  # type: ignore[no-untyped-def]
    owner, stranger = await make_partner(), await make_partner()
    reader = await make_partner(scopes=("payments:read",))

    def refusal(body: dict[str, Any]) -> tuple[str, str | None, str | None]:
        extensions = body["errors"][0]["extensions"]
        return extensions["code"], extensions.get("field"), extensions.get("reason")

    async def create(url: str, events: list[str] | None = None, key: str = owner.key
                     ) -> dict[str, Any]:
        return await gql(client, CREATE_ENDPOINT, {"input": {"url": url, "events": events}},
                         key=key)

    assert refusal(await create("http://127.0.0.1:9/h", ["payment.settled"])) == (
        "BAD_USER_INPUT", "events", "UNKNOWN_EVENT_TYPE")
    assert refusal(await create("http://127.0.0.1:9/h", [])) == (
        "BAD_USER_INPUT", "events", "NO_EVENT_TYPES")
    for url in ("http://10.0.0.5/h", "http://169.254.169.254/latest/meta-data",
                "http://[fe80::1]/h", "http://192.168.1.20:8080/h"):
        assert refusal(await create(url)) == ("BAD_USER_INPUT", "url", "URL_ADDRESS_NOT_ALLOWED")
    assert refusal(await create("ftp://127.0.0.1/h")) == (
        "BAD_USER_INPUT", "url", "URL_SCHEME_NOT_ALLOWED")
    assert refusal(await create("http://127.0.0.1:9/h", key=reader.key))[0] == "FORBIDDEN"

    mine = (await create("http://127.0.0.1:9/h"))["data"]["createWebhookEndpoint"]
    endpoint_id = mine["endpoint"]["id"]
    # Another partner's endpoint looks exactly like a missing one.
    for raw in (endpoint_id, str(uuid.uuid4()), "not-an-id"):
        assert (await gql(client, DELETE, {"id": raw}, key=stranger.key))["data"] == {
            "deleteWebhookEndpoint": False}
        for document, variables in ((ROTATE, {"id": raw}), (DELIVERIES, {"id": raw})):
            body = await gql(client, document, variables, key=stranger.key)
            assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND", body
            assert body["errors"][0]["message"] == "no such webhook endpoint"
    assert (await gql(client, ENDPOINTS, key=stranger.key))["data"] == {"webhookEndpoints": []}
    assert refusal(await gql(client, DELIVERIES, {"id": endpoint_id, "after": "x"},
                             key=owner.key))[:2] == ("BAD_USER_INPUT", "after")
    assert (await gql(client, DELETE, {"id": endpoint_id}, key=owner.key))["data"] == {
        "deleteWebhookEndpoint": True}
    assert (await gql(client, ENDPOINTS, key=owner.key))["data"] == {"webhookEndpoints": []}

    # Outside dev: https only, and never loopback, private or metadata addresses, also
    # behind a name that resolves to one.
    production = WebhookService(services.settings.model_copy(update={"dev": False}), services.db)

    async def resolves_private(host: str, port: int) -> list[str]:
        return ["10.20.30.40"]

    production.resolver = resolves_private
    partner_id = await production.partner_named(owner.name)
    for url, reason in (("http://127.0.0.1:9/h", "URL_SCHEME_NOT_ALLOWED"),
                        ("https://127.0.0.1:9/h", "URL_ADDRESS_NOT_ALLOWED"),
                        ("https://169.254.169.254/", "URL_ADDRESS_NOT_ALLOWED"),
                        ("https://hooks.partner.example/h", "URL_ADDRESS_NOT_ALLOWED")):
        with pytest.raises(BadUserInput) as caught:
            await production.create_for(partner_id, url, None)
        assert caught.value.graphql_extensions()["reason"] == reason, url


async def test_receiver_down_then_failing_then_up_gets_every_event_in_version_order(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    hook = await endpoint(client, partner, receiver.url("order"))
    endpoint_id = hook["endpoint"]["id"]
    async with sender(fast_settings(migrated)):
        payments = [await pay(client, partner, source, destination, f"{n}.00") for n in (1, 2, 3)]
        held = await pay(client, partner, source, destination, "4.00", capture=False)
        await watcher.status(held, "AUTHORIZED")
        await gql(client, CAPTURE, {"input": {"paymentId": held}}, key=partner.key)
        payments.append(held)
        for payment_id in payments:
            await watcher.terminal(payment_id)

        # Down (connection refused): attempts fail and are retried from the schedule.
        async def retried() -> bool:
            rows = await schedule_rows(services, endpoint_id)
            # Every payment scheduled; the first versions tried again and again (the later
            # ones wait for them).
            return {r["payment_id"] for r in rows} == set(payments) and all(
                max(r["attempts"] for r in rows if r["payment_id"] == p) >= 2 for p in payments)
        await eventually(retried)
        assert receiver.requests == []

        # Up but failing: still retried, later versions still waiting.
        receiver.answer = 500
        await receiver.start()
        await receiver.wait_for(lambda rs: len(rs) >= 6)
        receiver.answer = 200

        async def all_delivered() -> bool:
            rows = await schedule_rows(services, endpoint_id)
            return bool(rows) and all(r["state"] == "DELIVERED" for r in rows)
        await eventually(all_delivered)

    rows = await schedule_rows(services, endpoint_id)
    version_of = {r["event_id"]: (r["payment_id"], r["version"]) for r in rows}
    delivered_ids = {r.json["id"] for r in receiver.delivered()}
    assert delivered_ids == set(version_of)
    several = 0
    for payment_id in payments:
        # None lost: the payment's last status event, as the topic carried it, arrived.
        last = max(int(e["version"]) for e in watcher.events[payment_id])  # type: ignore[call-overload]
        assert str(event_id(uuid.UUID(payment_id), last)) in delivered_ids
        # In version order: every request for the payment, failed ones included, never
        # goes back to an earlier version.
        versions = [version_of[r.json["id"]][1] for r in receiver.requests
                    if version_of[r.json["id"]][0] == payment_id]
        assert versions == sorted(versions), versions
        several += len(set(versions)) >= 2
    assert several >= 1  # the ordering was put to the test (more than one version waited)
    authorized = [version_of[r.json["id"]][1] for r in receiver.delivered()
                  if r.json["data"]["id"] == held]
    assert len(authorized) >= 2  # AUTHORIZED then SUCCEEDED (PENDING when it came first)
    for request in receiver.requests:
        verify_signature(hook["secret"], request.headers["paystream-signature"], request.body)


async def test_a_sender_killed_mid_retry_leaves_the_schedule_to_the_next(
        client, make_partner, watcher, receiver, server_env, services) -> None:  # type: ignore[no-untyped-def]
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    hook = await endpoint(client, partner, receiver.url("kill"), events=["payment.succeeded"])
    receiver.answer = 500
    await receiver.start()
    group = f"webhooks-test-{uuid.uuid4().hex[:8]}"
    first = sender_process(server_env, group)
    second = None
    try:
        payment_id = await pay(client, partner, source, destination)
        # A process start and a group join first: generous on a loaded machine.
        await receiver.wait_for(lambda rs: sum(r.json["data"]["id"] == payment_id
                                               for r in rs) >= 2, timeout=90)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        [row] = await schedule_rows(services, hook["endpoint"]["id"])
        assert row["state"] == "PENDING" and row["attempts"] >= 2
        tried = len(receiver.requests)

        receiver.answer = 200
        second = sender_process(server_env, group)
        requests = await receiver.wait_for(of_type("payment.succeeded", payment_id, "kill"),
                                           timeout=90)
        ids = {r.headers["paystream-event-id"] for r in requests}
        assert ids == {row["event_id"]}  # the same event id on every attempt, both senders
        request = the(requests, "payment.succeeded", payment_id, "kill")
        verify_signature(hook["secret"], request.headers["paystream-signature"], request.body)

        async def settled() -> bool:
            [done] = await schedule_rows(services, hook["endpoint"]["id"])
            return bool(done["state"] == "DELIVERED")
        await eventually(settled)
        assert len(receiver.requests) > tried
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def test_an_address_refused_at_delivery_after_a_dns_change(
        client, make_partner, watcher, receiver, migrated, services, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    addresses = {"hooks.partner.test": ["127.0.0.1"]}

    async def resolver(host: str, port: int) -> list[str]:
        if host not in addresses:
            raise OSError("unknown host")
        return list(addresses[host])

    monkeypatch.setattr(services.webhooks, "resolver", resolver)
    hook = await endpoint(client, partner, receiver.url("dns", host="hooks.partner.test"),
                          events=["payment.succeeded"])
    await receiver.start()
    async with sender(fast_settings(migrated), resolver=resolver):
        first = await pay(client, partner, source, destination)
        await receiver.wait_for(of_type("payment.succeeded", first, "dns"))

        addresses["hooks.partner.test"] = ["10.9.8.7"]
        second = await pay(client, partner, source, destination, "2.00")
        terminal = await watcher.terminal(second)
        refused_id = str(event_id(uuid.UUID(second), int(terminal["version"])))  # type: ignore[call-overload]

        async def refused() -> bool:
            log = (await gql(client, DELIVERIES, {"id": hook["endpoint"]["id"]},
                             key=partner.key))["data"]["webhookDeliveries"]  # type: ignore[index]
            return any(d["eventId"] == refused_id and d["responseStatus"] is None
                       and "private address" in (d["error"] or "") for d in log)
        await eventually(refused)
    assert not any(r.json["data"]["id"] == second for r in receiver.requests)
    # Registering it now is refused too.
    body = await gql(client, CREATE_ENDPOINT, {"input": {
        "url": receiver.url("dns", host="hooks.partner.test")}}, key=partner.key)
    assert body["errors"][0]["extensions"]["reason"] == "URL_ADDRESS_NOT_ALLOWED"


async def test_a_failing_endpoint_is_given_up_and_disabled_without_holding_up_another(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    bad = await endpoint(client, payer, receiver.url("bad"), events=["payment.succeeded"])
    good = await endpoint(client, payee, receiver.url("good"), events=["payment.succeeded"])
    receiver.answers["bad"] = 500
    await receiver.start()
    async with sender(fast_settings(migrated, retry_window_s=1.5, disable_after_s=1.0)):
        payment_id = await pay(client, payer, source, destination)
        await receiver.wait_for(of_type("payment.succeeded", payment_id, "good"))
        assert [r.answered for r in receiver.requests if r.path == "bad"][:1] == [500]

        async def disabled() -> bool:
            listed = (await gql(client, ENDPOINTS, key=payer.key))["data"]["webhookEndpoints"]  # type: ignore[index]
            rows = await schedule_rows(services, bad["endpoint"]["id"])
            # Given up (its window ended first) or held for the endpoint's re-enabling.
            return listed[0]["status"] == "DISABLED" and (rows[0]["state"] == "FAILED"
                                                          or rows[0]["held"])
        await eventually(disabled)
    log = (await gql(client, DELIVERIES, {"id": bad["endpoint"]["id"], "first": 100},
                     key=payer.key))["data"]["webhookDeliveries"]  # type: ignore[index]
    assert len(log) >= 2 and all(d["responseStatus"] == 500 and d["error"] == "HTTP 500"
                                 for d in log)
    assert sorted(d["attempt"] for d in log) == list(range(1, len(log) + 1))
    [good_row] = await schedule_rows(services, good["endpoint"]["id"])
    assert good_row["state"] == "DELIVERED" and good_row["attempts"] == 1


ENABLE = "mutation($id: ID!) { enableWebhookEndpoint(id: $id) { id status } }"


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "paystream.cli", *args], env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_a_disabled_endpoint_holds_its_events_and_enabling_sends_them_all(
        client, make_partner, watcher, receiver, migrated, services, server_env) -> None:  # type: ignore[no-untyped-def]
    partner, stranger = await make_partner(), await make_partner()
    reader = await make_partner(scopes=("payments:read",))
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    hooks = {path: await endpoint(client, partner, receiver.url(path), events=["payment.succeeded"])
             for path in ("api", "cli")}
    ids = {path: hook["endpoint"]["id"] for path, hook in hooks.items()}
    receiver.answer = 500
    await receiver.start()
    paid: list[str] = []
    # Each event is given up 0.5 s after it was scheduled; the endpoints are disabled once
    # they have failed for 1.5 s, so the first events are given up during the failure streak.
    async with sender(fast_settings(migrated, retry_window_s=0.5, disable_after_s=1.5)):

        async def disabled() -> bool:
            listed = (await gql(client, ENDPOINTS, key=partner.key))["data"]["webhookEndpoints"]  # type: ignore[index]
            return {e["status"] for e in listed} == {"DISABLED"}

        while not await disabled():
            paid.append(await pay(client, partner, source, destination, f"{len(paid) + 1}.00"))

            async def settled(payment_id: str = paid[-1]) -> bool:
                rows = [r for path in ids for r in await schedule_rows(services, ids[path])
                        if r["payment_id"] == payment_id]
                return len(rows) == 2 and all(r["state"] == "FAILED" or r["held"] for r in rows)
            await eventually(settled)
        given_up = {r["payment_id"] for path in ids for r in await schedule_rows(services, ids[path])
                    if r["state"] == "FAILED"}
        assert paid[0] in given_up  # the streak's first events were given up, not held

        # Disabled: a new event is scheduled held, and not sent.
        paid.append(await pay(client, partner, source, destination, "0.50"))
        await watcher.terminal(paid[-1])

        async def held() -> bool:
            rows = [r for path in ids for r in await schedule_rows(services, ids[path])
                    if r["payment_id"] == paid[-1]]
            return len(rows) == 2 and all(r["held"] and r["attempts"] == 0 for r in rows)
        await eventually(held)
        terminal = await watcher.terminal(paid[-1])
        last_event = str(event_id(uuid.UUID(paid[-1]), int(terminal["version"])))  # type: ignore[call-overload]
        assert "held for 2 DISABLED endpoint(s)" in cli(server_env, "webhooks", "resend",
                                                        last_event)
        assert await held()  # a resend keeps it held
        tried = len(receiver.requests)

        # Only the owner may enable it, with the write scope; anything else is NOT_FOUND.
        for raw, key in ((ids["api"], stranger.key), (str(uuid.uuid4()), partner.key),
                         ("not-an-id", partner.key)):
            body = await gql(client, ENABLE, {"id": raw}, key=key)
            assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND", body
            assert body["errors"][0]["message"] == "no such webhook endpoint"
        body = await gql(client, ENABLE, {"id": ids["api"]}, key=reader.key)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
        assert len(receiver.requests) == tried  # nothing was sent meanwhile

        receiver.answer = 200
        enabled = await gql(client, ENABLE, {"id": ids["api"]}, key=partner.key)
        assert enabled["data"] == {"enableWebhookEndpoint": {"id": ids["api"], "status": "ENABLED"}}
        out = cli(server_env, "webhooks", "enable", ids["cli"])
        assert f"webhook endpoint {ids['cli']} ENABLED; {len(paid)} event(s) due now" in out

        # Everything it missed arrives: given up in the streak, held while disabled.
        expected = {(path, p) for path in ids for p in paid}
        await receiver.wait_for(lambda rs: {(r.path, r.json["data"]["id"]) for r in rs
                                            if r.answered < 300} >= expected)

        async def delivered() -> bool:
            rows = [r for path in ids for r in await schedule_rows(services, ids[path])]
            return len(rows) == len(expected) and all(r["state"] == "DELIVERED" for r in rows)
        await eventually(delivered)
    listed = (await gql(client, ENDPOINTS, key=partner.key))["data"]["webhookEndpoints"]  # type: ignore[index]
    assert {e["status"] for e in listed} == {"ENABLED"}
    # Enabling an ENABLED endpoint answers it unchanged.
    again = await gql(client, ENABLE, {"id": ids["api"]}, key=partner.key)
    assert again["data"] == {"enableWebhookEndpoint": {"id": ids["api"], "status": "ENABLED"}}
    for request in receiver.delivered():
        verify_signature(hooks[request.path]["secret"], request.headers["paystream-signature"],
                         request.body)


REFUND = """mutation($input: RefundPaymentInput!) { refundPayment(input: $input) { id } }"""
REFUND_VIEW = """
query($id: ID!) { payment(id: $id) { refunds { id amount status reason failureReason createdAt
  updatedAt } } }"""


async def test_a_refund_reaches_both_partners_as_refund_succeeded(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    kinds = ["refund.succeeded", "refund.failed"]
    payer_hook = await endpoint(client, payer, receiver.url("payer"), events=kinds)
    payee_hook = await endpoint(client, payee, receiver.url("payee"), events=kinds)
    await receiver.start()
    async with sender(fast_settings(migrated)):
        payment_id = await pay(client, payer, source, destination, "30.00")
        await watcher.terminal(payment_id)
        body = await gql(client, REFUND, {"input": {
            "idempotencyKey": uuid.uuid4().hex, "paymentId": payment_id, "amount": "10.00",
            "reason": "returned"}}, key=payer.key)
        refund_id = body["data"]["refundPayment"]["id"]  # type: ignore[index]

        def refunded(path: str) -> Callable[[list[Received]], bool]:
            return lambda rs: any(r.path == path and r.json["type"] == "refund.succeeded"
                                  and r.json["data"]["id"] == refund_id for r in rs)

        requests = await receiver.wait_for(lambda rs: refunded("payer")(rs)
                                           and refunded("payee")(rs))
        for path, hook, partner in (("payer", payer_hook, payer), ("payee", payee_hook, payee)):
            request = next(r for r in requests if r.path == path)
            verify_signature(hook["secret"], request.headers["paystream-signature"], request.body)
            data = request.json["data"]
            query = (await gql(client, REFUND_VIEW, {"id": payment_id}, key=partner.key)
                     )["data"]["payment"]["refunds"]  # type: ignore[index]
            assert {k: v for k, v in data.items() if k != "payment"} == query[0]
            assert data["amount"] == "10.00" and data["status"] == "SUCCEEDED"
            assert data["payment"]["id"] == payment_id
            assert data["payment"]["amountRefunded"] == "10.00"
            own, other = (("sourceAccount", "destinationAccount") if partner is payer
                          else ("destinationAccount", "sourceAccount"))
            assert data["payment"][own]["balance"] is not None
            assert data["payment"][other]["balance"] is None
        assert {r.path for r in requests} == {"payer", "payee"}
        assert all(r.json["type"] == "refund.succeeded" for r in requests)


FEED = """
query($after: String) { events(first: 100, after: $after) {
  edges { node { id type refund { id status } payment { id } } } } }"""


async def test_refund_pending_is_sent_before_the_outcome_and_is_in_the_feed(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    payer_hook = await endpoint(client, payer, receiver.url("payer"),
                                events=["refund.pending", "refund.succeeded"])
    payee_hook = await endpoint(client, payee, receiver.url("payee"), events=["refund.pending"])
    await receiver.start()
    async with sender(fast_settings(migrated)):
        payment_id = await pay(client, payer, source, destination, "30.00")
        await watcher.terminal(payment_id)
        body = await gql(client, REFUND, {"input": {
            "idempotencyKey": uuid.uuid4().hex, "paymentId": payment_id, "amount": "10.00",
            "reason": "returned"}}, key=payer.key)
        refund_id = body["data"]["refundPayment"]["id"]  # type: ignore[index]

        def sent(path: str, kind: str) -> Callable[[list[Received]], bool]:
            return lambda rs: any(r.path == path and r.json["type"] == kind
                                  and r.json["data"]["id"] == refund_id for r in rs)

        requests = await receiver.wait_for(lambda rs: sent("payer", "refund.succeeded")(rs)
                                           and sent("payee", "refund.pending")(rs))

    async def in_feed(key: str, node: dict[str, Any]) -> bool:
        feed = (await gql(client, FEED, key=key))["data"]["events"]["edges"]  # type: ignore[index]
        return node in [edge["node"] for edge in feed]

    for path, hook, partner in (("payer", payer_hook, payer), ("payee", payee_hook, payee)):
        mine = [r for r in requests if r.path == path]
        pending = next(r for r in mine if r.json["type"] == "refund.pending")
        verify_signature(hook["secret"], pending.headers["paystream-signature"], pending.body)
        data = pending.json["data"]
        assert (data["id"], data["status"], data["amount"], data["reason"]) == (
            refund_id, "PENDING", "10.00", "returned")
        assert data["failureReason"] is None
        # The payment as it stood: paid, nothing refunded yet; the partner's own view.
        assert data["payment"]["id"] == payment_id and data["payment"]["status"] == "SUCCEEDED"
        assert data["payment"]["amountRefunded"] == "0.00"
        own, other = (("sourceAccount", "destinationAccount") if partner is payer
                      else ("destinationAccount", "sourceAccount"))
        assert data["payment"][own]["balance"] is not None
        assert data["payment"][other]["balance"] is None
        # The same event is in the partner's feed, as refund.pending with the refund PENDING
        # (listed once no transaction that started before it is still running).
        listed = {"id": pending.json["id"], "type": "refund.pending",
                  "refund": {"id": refund_id, "status": "PENDING"}, "payment": {"id": payment_id}}
        await eventually(lambda key=partner.key, node=listed: in_feed(key, node))
    # Pending comes first, and the payee asked for nothing else.
    assert [r.json["type"] for r in requests if r.path == "payer"] == [
        "refund.pending", "refund.succeeded"]
    assert [r.json["type"] for r in requests if r.path == "payee"] == ["refund.pending"]


async def test_redirects_are_not_followed_slow_answers_time_out_big_ones_are_not_read(
        client, make_partner, watcher, receiver, migrated) -> None:  # type: ignore[no-untyped-def]
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    hooks = {path: await endpoint(client, partner, receiver.url(path), events=["payment.succeeded"])
             for path in ("redirect", "slow", "drip", "huge", "plain")}
    receiver.redirects.add("redirect")
    receiver.drip.add("drip")  # a byte every 0.5 s: no read waits 2 s, the whole would take long
    receiver.slow["slow"] = 3.0  # past the sender's 2 s request timeout (FAST)
    receiver.huge.add("huge")
    await receiver.start()
    async with sender(fast_settings(migrated)):
        payment_id = await pay(client, partner, source, destination)
        await receiver.wait_for(lambda rs: all(of_type("payment.succeeded", payment_id, path)(rs)
                                               for path in ("plain", "huge")))
        async with asyncio.timeout(30):
            await receiver.huge_ended.wait()

        def logged(path: str, predicate: Callable[[dict[str, Any]], bool]
                   ) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                log = (await gql(client, DELIVERIES, {"id": hooks[path]["endpoint"]["id"]},
                                 key=partner.key))["data"]["webhookDeliveries"]  # type: ignore[index]
                return any(predicate(d) for d in log)
            return check

        await eventually(logged("redirect", lambda d: d["responseStatus"] == 307
                                      and d["error"] == "HTTP 307"))
        await eventually(logged("slow", lambda d: d["responseStatus"] is None
                                      and d["error"] == "timeout after 2 s"))
        await eventually(logged("drip", lambda d: d["responseStatus"] is None
                                and d["error"] == "timeout after 2 s"))
        await eventually(logged("huge", lambda d: d["responseStatus"] == 200))
    assert not any(r.path == "redirect-target" for r in receiver.requests)
    # The sender stopped reading after the first KiB and hung up: most of 100 MiB never left.
    # (A sender reading it all makes the receiver send all 1600 chunks: checked by hand.)
    assert receiver.huge_chunks_sent < 160


async def test_an_endpoint_deleted_during_an_attempt_leaves_the_sender_running(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    doomed = await endpoint(client, partner, receiver.url("doomed"), events=["payment.succeeded"])
    receiver.slow["doomed"] = 1.0  # answers 200, within the timeout, after the deletion
    await receiver.start()
    async with sender(fast_settings(migrated)):
        first = await pay(client, partner, source, destination)
        await receiver.wait_for(lambda rs: any(r.path == "doomed" for r in rs))
        deleted = await gql(client, DELETE, {"id": doomed["endpoint"]["id"]}, key=partner.key)
        assert deleted["data"] == {"deleteWebhookEndpoint": True}
        assert await schedule_rows(services, doomed["endpoint"]["id"]) == []
        # The attempt in flight ends after the deletion (the sender settles it a moment
        # later, finding no row); the sender goes on delivering and recording.
        await receiver.wait_answered_slowly("doomed")
        later = await endpoint(client, partner, receiver.url("later"), events=["payment.succeeded"])
        second = await pay(client, partner, source, destination, "2.00")
        await receiver.wait_for(of_type("payment.succeeded", second, "later"))

        async def recorded() -> bool:
            rows = await schedule_rows(services, later["endpoint"]["id"])
            return [r["state"] for r in rows] == ["DELIVERED"]
        await eventually(recorded)
        assert any(r.path == "doomed" and r.json["data"]["id"] == first for r in receiver.requests)
        assert later["endpoint"]["id"] != doomed["endpoint"]["id"]


async def test_no_endpoint_gets_more_attempts_at_once_than_its_share(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    slow = await endpoint(client, partner, receiver.url("slow-share"), events=["payment.succeeded"])
    receiver.slow["slow-share"] = 0.5
    await receiver.start()
    # A backlog first, so the sender finds all twelve due at once.
    paid = [await pay(client, partner, source, destination, f"{n}.00") for n in range(1, 13)]
    for payment_id in paid:
        await watcher.terminal(payment_id)
    async with sender(fast_settings(migrated, max_in_flight_per_endpoint=4)):

        async def settled() -> bool:
            rows = await schedule_rows(services, slow["endpoint"]["id"])
            return len(rows) == 12 and all(r["state"] == "DELIVERED" for r in rows)
        await eventually(settled)
    assert {r.json["data"]["id"] for r in receiver.delivered("slow-share")} == set(paid)
    # Four at a time, never more (one claim could take the twelve), and in parallel.
    assert receiver.most_active["slow-share"] == 4


async def test_two_senders_share_the_schedule_and_deliver_each_event_once(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    hooks = [await endpoint(client, partner, receiver.url(f"shared-{n}"),
                            events=["payment.succeeded"]) for n in range(3)]
    await receiver.start()
    settings = fast_settings(migrated)  # one group for both
    async with sender(settings), sender(settings):
        payments = [await pay(client, partner, source, destination, f"{n}.00")
                    for n in range(1, 9)]
        expected = {(f"shared-{n}", p) for n in range(3) for p in payments}
        await receiver.wait_for(lambda rs: {(r.path, r.json["data"]["id"]) for r in rs
                                            if r.answered < 300} >= expected, timeout=60)

        async def settled() -> bool:
            rows = [r for h in hooks for r in await schedule_rows(services, h["endpoint"]["id"])]
            return len(rows) == len(expected) and all(r["state"] == "DELIVERED" for r in rows)
        await eventually(settled)
    # Claims are exclusive (SKIP LOCKED, leases far longer than an attempt here): no event
    # went to an endpoint twice.
    sent = [(r.path, r.headers["paystream-event-id"]) for r in receiver.requests]
    assert len(sent) == len(set(sent)) == len(expected)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_sender_serves_its_metrics(
        client, make_partner, watcher, receiver, migrated, services) -> None:  # type: ignore[no-untyped-def]
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    await endpoint(client, partner, receiver.url("good"), events=["payment.succeeded"])
    bad = await endpoint(client, partner, receiver.url("bad"), events=["payment.succeeded"])
    receiver.answers["bad"] = 500
    await receiver.start()
    port = free_port()
    settings = fast_settings(migrated, retry_window_s=60.0, disable_after_s=1.0)
    settings = settings.model_copy(update={"metrics": settings.metrics.model_copy(update={
        "webhooks_port": port, "sample_interval_s": 0.1})})
    # This process's counters, before (other tests' senders ran in it too).
    before = {key: sample("paystream_webhook_attempts_total", outcome=key[0], response=key[1])
              for key in (("delivered", "2xx"), ("retry", "5xx"), ("held", "5xx"))}
    lags_before = sample("paystream_webhook_delivery_lag_seconds_count")
    async with sender(settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        paid = [await pay(client, partner, source, destination, f"{n}.00") for n in (1, 2, 3)]
        await receiver.wait_for(lambda rs: all(of_type("payment.succeeded", p, "good")(rs)
                                               for p in paid))

        async def held() -> bool:
            rows = await schedule_rows(services, bad["endpoint"]["id"])
            return len(rows) == 3 and all(r["held"] for r in rows)
        await eventually(held)

        async def exposed() -> dict[str, float]:
            text_ = (await http.get("/metrics")).text
            return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                    for line in text_.splitlines() if line and not line.startswith("#")}

        # The sampler reads the schedule and the endpoints (the whole database's: at least
        # this test's) and the sender group's lag on payments.status.
        async def sampled() -> bool:
            series = await exposed()
            return (series.get('paystream_webhook_schedule{state="held"}', 0) >= 3
                    and series.get('paystream_webhook_endpoints{status="DISABLED"}', 0) >= 1
                    and any(name.startswith("paystream_consumer_lag{")
                            and f'group="{settings.webhooks.group}"' in name
                            and 'topic="payments.status"' in name for name in series))
        await eventually(sampled)
        series = await exposed()
        assert 'paystream_webhook_oldest_due_seconds' in series
        assert 'paystream_webhook_in_flight' in series
        assert series.get("paystream_webhook_attempt_seconds_count", 0) >= 6
    after = {key: sample("paystream_webhook_attempts_total", outcome=key[0], response=key[1])
             for key in before}
    assert after[("delivered", "2xx")] - before[("delivered", "2xx")] == 3
    assert after[("retry", "5xx")] - before[("retry", "5xx")] >= 1
    # The attempt that disabled the endpoint held its event (and the other two with it).
    assert after[("held", "5xx")] - before[("held", "5xx")] >= 1
    assert sample("paystream_webhook_delivery_lag_seconds_count") - lags_before == 3


async def test_the_relay_prunes_finished_webhook_events_and_old_attempts_but_not_pending_ones(
        services: Any) -> None:
    """With a retention of 10 days, not the stack's 30 (the stack's own relays, sharing this
    database, leave these rows alone). The endpoint is DISABLED so that no sender touches its
    PENDING event meanwhile."""
    from paystream.config import OutboxSettings
    from paystream.worker.outbox import OutboxRelay

    partner, endpoint = uuid.uuid4(), uuid.uuid4()
    ages = {  # event: (state, days since it finished or None, days since each attempt)
        "delivered long ago": ("DELIVERED", 11, (11,)),
        "failed long ago": ("FAILED", 20, (22, 21)),
        "delivered lately": ("DELIVERED", 1, (11, 1)),  # retried for ten days
        "pending for long": ("PENDING", None, (12,)),
    }
    ids: dict[str, int] = {}
    async with services.db.write_session() as session:
        await session.execute(text("INSERT INTO partners (id, name) VALUES (:id, :name)"),
                              {"id": partner, "name": f"prune-{partner.hex[:8]}"})
        await session.execute(text(
            "INSERT INTO webhook_endpoints (id, partner_id, url, events, status,"
            " secret_ciphertext, disabled_at) VALUES (:id, :p, 'http://127.0.0.1:9/hook',"
            " ARRAY['payment.succeeded'], 'DISABLED', '\\x00', now())"),
            {"id": endpoint, "p": partner})
        for version, (name, (state, finished, attempts)) in enumerate(ages.items(), start=1):
            event = uuid.uuid4()
            ids[name] = (await session.execute(text(
                "INSERT INTO webhook_events (event_id, endpoint_id, payment_id, version, type,"
                " body, state, attempts, finished_at) VALUES (:event, :endpoint,"
                " gen_random_uuid(), :version, 'payment.succeeded', '{}', :state, :attempts,"
                " now() - make_interval(days => CAST(:finished AS integer))) RETURNING id"),
                {"event": event, "endpoint": endpoint, "version": version, "state": state,
                 "attempts": len(attempts), "finished": finished})).scalar_one()
            for attempt, age in enumerate(attempts, start=1):
                await session.execute(text(
                    "INSERT INTO webhook_deliveries (webhook_event_id, endpoint_id, event_id,"
                    " attempt, response_status, at) VALUES (:id, :endpoint, :event, :attempt,"
                    " 500, now() - make_interval(days => :age))"),
                    {"id": ids[name], "endpoint": endpoint, "event": event, "attempt": attempt,
                     "age": age})

    async def left() -> tuple[set[str], dict[str, int]]:
        async with services.db.write_session() as session:
            events = {row[0] for row in await session.execute(text(
                "SELECT id FROM webhook_events WHERE endpoint_id = :e"), {"e": endpoint})}
            attempts = dict((await session.execute(text(
                "SELECT webhook_event_id, count(*) FROM webhook_deliveries WHERE endpoint_id = :e"
                " GROUP BY webhook_event_id"), {"e": endpoint})).all())
        names = {v: k for k, v in ids.items()}
        return ({names[i] for i in events},
                {names[i]: int(n) for i, n in attempts.items()})

    def relay(settings: OutboxSettings) -> OutboxRelay:
        return OutboxRelay(services.db, producer=None,  # type: ignore[arg-type]
                           topic="payments.status", requested_topic="payments.requested",
                           settings=settings)

    # The default retention (what the stack's relays do every second) leaves all of them.
    await relay(OutboxSettings()).prune_webhooks_once()
    assert await left() == (set(ages), {"delivered long ago": 1, "failed long ago": 2,
                                        "delivered lately": 2, "pending for long": 1})
    pruning = relay(OutboxSettings(webhooks_retention_days=10, prune_batch=2))
    pruned = [await pruning.prune_webhooks_once() for _ in range(4)]
    assert pruned[0] == 4 and pruned[-1] == 0, pruned  # two attempts and two events a batch
    # Attempts older than 10 days are gone, whichever event they belong to; finished events
    # older than 10 days with them; the PENDING event stays however old.
    assert await left() == ({"delivered lately", "pending for long"}, {"delivered lately": 1})
