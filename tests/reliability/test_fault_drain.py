"""Scenario 6: 1,000 payments sent at once, all from one account, worth far more than it
holds. The account drains to what no remaining payment fits, never below zero, and money is
conserved. (PAYSTREAM_HEAVY=1: 5,000.)"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid

import pytest

from tests.integration._gateway import app_client

from .conftest import StatusWatcher, sized
from .invariants import assert_ledger_sound, balances
from .test_fault_worker_kills import CREATE, NO_RATE_LIMIT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAYMENTS = sized(1_000, 5_000)


async def test_concurrent_payments_drain_one_account(migrated, worker, make_partner, services) -> None:
    rng = random.Random(6)
    payer, payee = await make_partner(), await make_partner()
    source = await payer.account(balance="500.00")
    destinations = [await payee.account(balance="0") for _ in range(10)]
    accounts = [source, *destinations]
    opening = await balances(services, accounts)
    amounts = [rng.randint(1, 200) for _ in range(PAYMENTS)]  # minor units: 0.01 to 2.00
    assert sum(amounts) > 2 * opening[source]

    watcher = StatusWatcher(migrated)
    await watcher.start()
    try:
        async with app_client(migrated, limits=NO_RATE_LIMIT) as (http, _):
            jitter = random.Random(7)

            async def pay(amount: int) -> str:
                variables = {"input": {
                    "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
                    "destinationAccountId": rng.choice(destinations),
                    "amount": f"{amount / 100:.2f}", "currency": "USD"}}
                deadline = time.monotonic() + sized(60, 300)
                for attempt in itertools.count():
                    response = await http.post("/graphql", json={"query": CREATE,
                                                                 "variables": variables},
                                               headers={"Authorization": f"Bearer {payer.key}"})
                    body = response.json()
                    if [e["extensions"]["code"] for e in body.get("errors") or []] != ["UNAVAILABLE"]:
                        break
                    # More requests in flight than pooled connections (the heavy size): the
                    # process says it is busy, and the client retries with the same key, with
                    # jittered backoff, as a partner's client would.
                    assert time.monotonic() < deadline, body
                    await asyncio.sleep(jitter.uniform(0.5, 1.5) * min(5.0, 0.1 * 2 ** attempt))
                assert not body.get("errors"), body
                return str(body["data"]["createPayment"]["id"])

            ids = await asyncio.gather(*(pay(a) for a in amounts))
        await watcher.wait_count(ids, at_least=len(ids), timeout=sized(120, 400))
    finally:
        await watcher.stop()

    statuses = await assert_ledger_sound(services, accounts, opening, ids)
    final = await balances(services, accounts)
    amount_of = dict(zip(ids, amounts, strict=True))
    terminal = {p: next(e for e in watcher.events[p] if e["status"] != "PENDING") for p in ids}
    succeeded = [p for p in ids if terminal[p]["status"] == "SUCCEEDED"]
    failed = [p for p in ids if terminal[p]["status"] == "FAILED"]
    assert {terminal[p]["failure_reason"] for p in failed} == {"INSUFFICIENT_FUNDS"}
    assert len(succeeded) == statuses["SUCCEEDED"] and len(failed) == statuses["FAILED"] > 0
    # Exactly the succeeded payments left the account.
    assert opening[source] - final[source] == sum(amount_of[p] for p in succeeded)
    # The source only loses money, so a payment refused for lack of funds could not fit in
    # the final balance either: nothing was refused that would have fit.
    assert final[source] < min(amount_of[p] for p in failed)
