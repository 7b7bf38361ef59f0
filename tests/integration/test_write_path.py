"""The write path end to end: createPayment -> broker -> worker -> ledger -> payments.status."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from .conftest import StatusWatcher, gql, wait_for_replay

pytestmark = pytest.mark.integration

CREATE = """
mutation($input: CreatePaymentInput!) {
  createPayment(input: $input) { id status amount currency failureReason reference
    sourceAccount { id balance } destinationAccount { id } }
}
"""
PAYMENT = "query($id: ID!) { payment(id: $id) { id status amount failureReason } }"
BALANCE = "query($id: ID!) { account(id: $id) { balance } }"


@pytest.fixture
async def watcher(migrated, worker):  # type: ignore[no-untyped-def]
    watcher = StatusWatcher(migrated)
    await watcher.start()
    yield watcher
    await watcher.stop()


def payment_input(source: str, destination: str, amount: str, currency: str = "USD",
                  key: str | None = None, reference: str | None = None) -> dict[str, object]:
    return {"input": {"idempotencyKey": key or uuid.uuid4().hex, "sourceAccountId": source,
                      "destinationAccountId": destination, "amount": amount, "currency": currency,
                      "reference": reference}}


async def ledger_state(services, *accounts: str) -> dict[str, int]:
    async with services.db.primary.connect() as conn:
        rows = await conn.execute(
            text("SELECT id::text, balance_minor FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(a) for a in accounts]},
        )
        return dict(rows.all())


async def test_successful_payment_moves_both_balances(client, make_partner, watcher, services) -> None:
    payer, payee = await make_partner(), await make_partner()
    source = await payer.account(balance="100.00")
    destination = await payee.account(balance="5.00")

    body = await gql(client, CREATE, payment_input(source, destination, "30.25", reference="inv 7"),
                     key=payer.key)
    created = body["data"]["createPayment"]
    assert created["status"] == "PENDING" and created["amount"] == "30.25"
    assert created["reference"] == "inv 7"
    # Visible at once, before the worker ran.
    shown = await gql(client, PAYMENT, {"id": created["id"]}, key=payer.key)
    assert shown["data"]["payment"]["id"] == created["id"]

    event = await watcher.terminal(created["id"])
    assert event["status"] == "SUCCEEDED"
    assert event["source_balance_minor"] == 6975 and event["destination_balance_minor"] == 3525
    assert await ledger_state(services, source, destination) == {source: 6975, destination: 3525}
    async with services.db.primary.connect() as conn:
        entries = (await conn.execute(
            text("SELECT account_id::text, amount_minor FROM ledger_entries WHERE payment_id = :p"),
            {"p": uuid.UUID(created["id"])},
        )).all()
    assert sorted(entries) == sorted([(source, -3025), (destination, 3025)])
    # The payee sees the payment too, but not the payer's balance (once the replica has it:
    # read-your-writes during replica lag is the read path's concern).
    await wait_for_replay(services.db)
    seen = await gql(client, "query($id: ID!) { payment(id: $id) { status sourceAccount { balance } } }",
                     {"id": created["id"]}, key=payee.key)
    assert seen["data"]["payment"] == {"status": "SUCCEEDED", "sourceAccount": {"balance": None}}


async def test_insufficient_funds_fails_and_moves_nothing(client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="10.00"), await partner.account(balance="0")
    body = await gql(client, CREATE, payment_input(source, destination, "10.01"), key=partner.key)
    payment_id = body["data"]["createPayment"]["id"]
    event = await watcher.terminal(payment_id)
    assert (event["status"], event["failure_reason"]) == ("FAILED", "INSUFFICIENT_FUNDS")
    assert await ledger_state(services, source, destination) == {source: 1000, destination: 0}
    await wait_for_replay(services.db)
    shown = await gql(client, PAYMENT, {"id": payment_id}, key=partner.key)
    assert shown["data"]["payment"]["failureReason"] == "INSUFFICIENT_FUNDS"


async def test_currency_mismatch_is_refused(client, make_partner) -> None:
    partner = await make_partner()
    usd, eur = await partner.account("USD"), await partner.account("EUR")
    body = await gql(client, CREATE, payment_input(usd, eur, "1.00", "USD"), key=partner.key)
    error = body["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["reason"] == "CURRENCY_MISMATCH"


@pytest.mark.parametrize(
    ("amount", "currency", "field"),
    [("0.001", "USD", "amount"), ("1.5", "JPY", "amount"), ("1e309", "USD", "amount"),
     ("NaN", "USD", "amount"), ("-0", "USD", "amount"), ("0", "USD", "amount"),
     ("10000000000000.01", "USD", "amount"), ("1.00", "usd", "currency"),
     ("1.00", "XYZ", "currency")],
)
async def test_bad_amounts_name_the_field(client, make_partner, amount, currency, field) -> None:
    partner = await make_partner()
    a, b = await partner.account(), await partner.account()
    body = await gql(client, CREATE, payment_input(a, b, amount, currency), key=partner.key)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["field"] == field


async def test_exponents_are_honoured(client, make_partner, watcher) -> None:
    partner = await make_partner()
    for currency, amount, opening in (("JPY", "500", "1000"), ("BHD", "1.234", "2.000")):
        a, b = await partner.account(currency, opening), await partner.account(currency, "0")
        body = await gql(client, CREATE, payment_input(a, b, amount, currency), key=partner.key)
        assert body["data"]["createPayment"]["amount"] == amount
        event = await watcher.terminal(body["data"]["createPayment"]["id"])
        assert event["status"] == "SUCCEEDED"


async def test_idempotent_retry_and_conflict(client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    a, b = await partner.account(balance="50.00"), await partner.account(balance="0")
    key = uuid.uuid4().hex
    first = await gql(client, CREATE, payment_input(a, b, "20.00", key=key), key=partner.key)
    again = await gql(client, CREATE, payment_input(a, b, "20.00", key=key), key=partner.key)
    assert again["data"]["createPayment"]["id"] == first["data"]["createPayment"]["id"]
    await watcher.terminal(first["data"]["createPayment"]["id"])
    after = await gql(client, CREATE, payment_input(a, b, "20.00", key=key), key=partner.key)
    assert after["data"]["createPayment"]["id"] == first["data"]["createPayment"]["id"]
    assert after["data"]["createPayment"]["status"] == "SUCCEEDED"
    conflict = await gql(client, CREATE, payment_input(a, b, "20.01", key=key), key=partner.key)
    assert conflict["errors"][0]["extensions"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert await ledger_state(services, a, b) == {a: 3000, b: 2000}


async def test_concurrent_duplicates_make_one_payment(client, make_partner, watcher, services) -> None:
    partner = await make_partner()
    a, b = await partner.account(balance="50.00"), await partner.account(balance="0")
    variables = payment_input(a, b, "1.00")
    bodies = await asyncio.gather(*(gql(client, CREATE, variables, key=partner.key) for _ in range(50)))
    ids = {body["data"]["createPayment"]["id"] for body in bodies}
    assert len(ids) == 1
    await watcher.terminal(ids.pop())
    async with services.db.primary.connect() as conn:
        count = (await conn.execute(
            text("SELECT count(*) FROM payments WHERE source_account_id = :a"), {"a": uuid.UUID(a)}
        )).scalar()
    assert count == 1
    assert await ledger_state(services, a, b) == {a: 4900, b: 100}


async def test_cannot_pay_from_another_partners_account(client, make_partner, services) -> None:
    victim, thief = await make_partner(), await make_partner()
    victim_account = await victim.account(balance="100.00")
    thief_account = await thief.account(balance="0")
    body = await gql(client, CREATE, payment_input(victim_account, thief_account, "1.00"), key=thief.key)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["field"] == "sourceAccountId"
    # Reported exactly like an account that does not exist.
    missing = await gql(client, CREATE, payment_input(str(uuid.uuid4()), thief_account, "1.00"),
                        key=thief.key)
    assert missing["errors"][0]["message"] == body["errors"][0]["message"]
    assert await ledger_state(services, victim_account) == {victim_account: 10000}


async def test_read_only_key_cannot_pay(client, make_partner) -> None:
    partner = await make_partner(scopes=("payments:read",))
    a, b = await partner.account(), await partner.account()
    body = await gql(client, CREATE, payment_input(a, b, "1.00"), key=partner.key)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_poison_message_goes_to_dead_letter_and_worker_continues(
    client, make_partner, watcher, migrated
) -> None:
    from aiokafka import TopicPartition

    from paystream.events import make_consumer, make_producer

    kafka = migrated.kafka
    dlq = make_consumer(kafka, group_id=None)
    await dlq.start()
    tp = TopicPartition(kafka.dlq_topic, 0)
    dlq.assign([tp])
    await dlq.seek_to_end(tp)
    producer = make_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(kafka.requested_topic, b"\xff not json", key=b"poison")
        record = await asyncio.wait_for(dlq.getone(), 30)
        assert dict(record.headers)["reason"].startswith(b"not JSON")
    finally:
        await producer.stop()
        await dlq.stop()
    # The worker is still posting payments.
    partner = await make_partner()
    a, b = await partner.account(), await partner.account()
    body = await gql(client, CREATE, payment_input(a, b, "1.00"), key=partner.key)
    event = await watcher.terminal(body["data"]["createPayment"]["id"])
    assert event["status"] == "SUCCEEDED"


async def test_broker_unreachable_still_accepts_and_the_relay_delivers(
        client, make_partner, migrated, watcher, services) -> None:
    """An API whose broker cannot be reached: createPayment still answers PENDING, because
    acceptance is the primary's commit of the payment with its request; the request waits
    unsent in the outbox, and the worker's relay publishes it, so it settles exactly once.
    The same key retried meanwhile returns the same payment and queues nothing more."""
    import socket

    from paystream.services.app import Services
    from paystream.services.payments import CreatePayment

    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    kafka = migrated.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{dead_port}"})
    down = Services.create(migrated.model_copy(update={"kafka": kafka}))
    await down.start()
    partner = await make_partner()
    a, b = await partner.account(balance="10.00"), await partner.account(balance="0")
    caller = await down.auth.caller_for(f"Bearer {partner.key}")
    request = CreatePayment(idempotency_key="accept-me", source_account_id=a,
                            destination_account_id=b, amount="4.00", currency="USD")
    try:
        row = await down.payments.create(caller, request)
        assert row.status == "PENDING"
        again = await down.payments.create(caller, request)
        assert again.id == row.id
    finally:
        await down.close()
    async with services.db.primary.connect() as conn:
        queued = (await conn.execute(text(
            "SELECT count(*) FROM outbox WHERE topic = :t AND payload->>'payment_id' = :p"),
            {"t": migrated.kafka.requested_topic, "p": str(row.id)})).scalar()
    assert queued == 1
    assert (await watcher.terminal(str(row.id)))["status"] == "SUCCEEDED"
    retried = await gql(client, CREATE, payment_input(a, b, "4.00", key="accept-me"), key=partner.key)
    answer = retried["data"]["createPayment"]
    assert (answer["id"], answer["status"]) == (str(row.id), "SUCCEEDED")
    assert await ledger_state(services, a, b) == {a: 600, b: 400}


async def test_two_workers_share_the_partitions(migrated, server_env, make_partner) -> None:
    import json
    import os
    import signal as signals

    from paystream.events.kafka import ensure_topics
    from paystream.services.app import Services
    from paystream.services.payments import CreatePayment

    from .conftest import LOG_DIR, start_worker, stop_process

    suffix = uuid.uuid4().hex[:8]
    kafka = migrated.kafka.model_copy(update={
        "requested_topic": f"share.requested.{suffix}", "status_topic": f"share.status.{suffix}",
        "worker_group": f"share-{suffix}"})
    settings = migrated.model_copy(update={"kafka": kafka})
    await ensure_topics(kafka)
    env = {**server_env, "PAYSTREAM_KAFKA__REQUESTED_TOPIC": kafka.requested_topic,
           "PAYSTREAM_KAFKA__STATUS_TOPIC": kafka.status_topic,
           "PAYSTREAM_KAFKA__WORKER_GROUP": kafka.worker_group}
    watcher = StatusWatcher(settings)
    await watcher.start()
    before = set(os.listdir(LOG_DIR))
    workers = [start_worker(env), start_worker(env)]
    services = Services.create(settings)
    await services.start()
    try:
        partner = await make_partner()
        partner.services = services
        # Many source accounts, so the requests are keyed onto many partitions.
        accounts = [await partner.account(balance="10.00") for _ in range(24)]
        caller = await services.auth.caller_for(f"Bearer {partner.key}")
        ids = [str((await services.payments.create(caller, CreatePayment(
            idempotency_key=f"share-{i}", source_account_id=accounts[i],
            destination_account_id=accounts[(i + 1) % 24], amount="1.00", currency="USD"))).id)
            for i in range(24)]
        await watcher.wait_count(ids, at_least=24, timeout=90)
    finally:
        for worker in workers:
            worker.send_signal(signals.SIGTERM)
        for worker in workers:
            stop_process(worker)
        await watcher.stop()
        await services.close()
    counts = []
    for name in set(os.listdir(LOG_DIR)) - before:
        posted = 0
        log = await asyncio.to_thread(Path(LOG_DIR, name).read_text)
        for line in log.splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if str(entry.get("msg", "")).startswith("batch posted="):
                posted += int(entry["msg"].split()[1].split("=")[1])
        counts.append(posted)
    # Each worker posted some of the payments, and together all of them.
    assert len(counts) == 2 and sum(counts) == 24
    assert all(c > 0 for c in counts), f"one worker got no partition: {counts}"
