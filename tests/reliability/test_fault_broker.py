"""Scenario 4: the broker stopped while clients pay. createPayment answers UNAVAILABLE within
5 s and records nothing; reads keep working; with the broker back, retries with the same keys
succeed exactly once, and the worker, the API and their consumers carry on by themselves.

The dev broker keeps messages in memory only: a restart loses every topic and message, as an
Apache Kafka cluster would not. The test recreates the topics (as a deployment's topic setup
would) and retries every key, including the ones accepted before the stop: a retry of a
payment still PENDING produces its request again, so none is stranded.

tests/integration/test_write_path.py::test_broker_down_is_unavailable_and_records_nothing
points a second app at a dead port; here the real broker goes away under a running stack."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from paystream.events.kafka import ensure_topics

from .conftest import StatusWatcher, gql, sized, start_worker, stop_process
from .invariants import assert_ledger_sound, assert_one_payment_per_key, balances

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CREATE = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"""


async def test_broker_stopped_and_restarted_under_load(client, migrated, worker, make_partner,
                                                       services, devstack, server_env) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to stop the broker")
    partner = await make_partner()
    accounts = [await partner.account(balance="100.00") for _ in range(10)]
    opening = await balances(services, accounts)

    def request(n: int) -> dict[str, Any]:
        return {"input": {"idempotencyKey": f"broker-{n}", "sourceAccountId": accounts[n % 10],
                          "destinationAccountId": accounts[(n + 1) % 10],
                          "amount": f"{1 + n % 7}.00", "currency": "USD"}}

    async def create(n: int) -> tuple[dict[str, Any], float]:
        """The answer and how long it took, after waiting out any RATE_LIMITED answer (the
        heavy size sends more at once than the session's default mutation burst)."""
        while True:
            started = time.monotonic()
            response = await client.post("/graphql", json={"query": CREATE, "variables": request(n)},
                                         headers={"Authorization": f"Bearer {partner.key}"})
            body = response.json()
            if response.status_code != 429:
                assert response.status_code == 200, response.text
                return body, time.monotonic() - started
            await asyncio.sleep(body["errors"][0]["extensions"]["retryAfter"])

    before = sized(30, 200)
    first = StatusWatcher(migrated)
    await first.start()
    try:
        accepted = {n: body["data"]["createPayment"]["id"] for n, (body, _) in
                    enumerate(await asyncio.gather(*(create(n) for n in range(before))))}
        # The worker is consuming (the stop lands in steady state, not during its start-up).
        await first.wait_count(list(accepted.values()), at_least=1, timeout=60)
    finally:
        await first.stop()

    await asyncio.to_thread(devstack.stop_broker)
    # A worker that starts while the broker is down waits for it rather than exit.
    late_worker = start_worker(server_env)
    try:
        during = range(before, before + sized(30, 200))
        refused = await asyncio.gather(*(create(n) for n in during))
        for body, seconds in refused:
            assert body["data"] is None, body
            assert body["errors"][0]["extensions"]["code"] == "UNAVAILABLE", body
            assert seconds < 5.0, seconds
        # Reads do not need the broker.
        read = await gql(client, "query($id: ID!) { account(id: $id) { id } }", {"id": accounts[0]},
                         key=partner.key)
        assert read["data"] == {"account": {"id": accounts[0]}}
        async with services.db.primary.connect() as conn:
            recorded = (await conn.execute(text(
                "SELECT count(*) FROM payments WHERE idempotency_key = ANY(:keys)"
                " AND source_account_id = ANY(CAST(:accounts AS uuid[]))"),
                {"keys": [f"broker-{n}" for n in during],
                 "accounts": [uuid.UUID(a) for a in accounts]})).scalar()
        assert recorded == 0
    finally:
        await asyncio.to_thread(devstack.start_broker)
    await ensure_topics(migrated.kafka)

    watcher = StatusWatcher(migrated)
    await watcher.start()
    try:
        everyone = range(before + len(during))
        # Retried until the API's producer has found the broker again (it answers UNAVAILABLE,
        # fast, until then); each key at least once after that, and once more to compare.
        retried: dict[int, str] = {}
        deadline = asyncio.get_running_loop().time() + 60
        while len(retried) < len(everyone):
            for n in everyone:
                if n in retried:
                    continue
                body, _ = await create(n)
                if body.get("errors"):
                    assert body["errors"][0]["extensions"]["code"] == "UNAVAILABLE", body
                    assert asyncio.get_running_loop().time() < deadline, "broker never usable again"
                    break
                retried[n] = body["data"]["createPayment"]["id"]
        again = {n: (await create(n))[0]["data"]["createPayment"]["id"] for n in everyone}
        assert again == retried
        assert all(retried[n] == accepted[n] for n in accepted)  # same payment as before the stop
        ids = list(retried.values())
        # The terminal status of a payment posted before the stop was published to the old
        # broker; the database says it is settled. The others settle now.
        async with services.db.primary.connect() as conn:
            settled = {str(r[0]) for r in (await conn.execute(text(
                "SELECT id FROM payments WHERE id = ANY(CAST(:ids AS uuid[])) AND status <> 'PENDING'"),
                {"ids": [uuid.UUID(i) for i in ids]})).all()}
        waiting = [i for i in ids if i not in settled]
        await watcher.wait_count(waiting, at_least=len(waiting), timeout=120)
        assert late_worker.poll() is None, "the worker started during the outage exited"
    finally:
        await watcher.stop()
        stop_process(late_worker)
    await assert_ledger_sound(services, accounts, opening, ids)
    await assert_one_payment_per_key(services, partner.name, {f"broker-{n}" for n in everyone})
