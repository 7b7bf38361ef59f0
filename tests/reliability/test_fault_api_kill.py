"""Scenario 5: an API process is SIGKILLed while many subscribers (both protocols, several per
connection) watch payments that the worker is posting. Each subscriber reconnects to another
process and ends with its payment's terminal status: none is missed, none goes backwards.

tests/integration/test_subscriptions.py has the single-subscriber version."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from paystream.client import PAYMENT_STATUS, PaystreamClient, Subscriptions

from .conftest import sized, start_api, stop_process
from .invariants import assert_ledger_verified

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_CONNECTION = 10
TERMINAL = ("SUCCEEDED", "FAILED")


async def test_subscribers_of_a_killed_api_reconnect_and_miss_nothing(
    worker: Any, make_partner: Any, server_env: dict[str, str], services: Any,
) -> None:
    # Both processes of their own, with a subscribe burst past what one key sends here (the
    # heavy size's 400 subscribes ran into the default burst of 200; the rate has its own test).
    burst = {"PAYSTREAM_LIMITS__SUBSCRIBE_BURST": "10000"}
    doomed, api = start_api(server_env, **burst), start_api(server_env, **burst)
    partner = await make_partner()
    accounts = [await partner.account(balance="50.00") for _ in range(10)]
    count = sized(60, 400)
    states: dict[str, list[str]] = {}
    changed = asyncio.Condition()

    async def follow(url: str, protocol: str, payment_ids: list[str]) -> int:
        """Follow the payments on one connection; on a dropped connection, reconnect to the
        surviving process and resubscribe the ones not finished. Returns reconnections."""
        remaining, reconnects = list(payment_ids), 0
        while remaining:
            try:
                async with Subscriptions(url, partner.key, protocol) as ws:  # type: ignore[arg-type]
                    async def one(payment_id: str) -> None:
                        async for data in ws.subscribe(PAYMENT_STATUS, {"id": payment_id}):
                            async with changed:
                                states[payment_id].append(data["paymentStatus"]["status"])
                                changed.notify_all()
                        remaining.remove(payment_id)

                    await asyncio.gather(*(one(p) for p in list(remaining)))
            except (ConnectionError, OSError):
                url, reconnects = api.ws_url, reconnects + 1
        return reconnects

    try:
        await doomed.wait_ready()
        await api.wait_ready()
        worker.send_signal(signal.SIGSTOP)  # payments stay PENDING until the subscribers watch
        try:
            async with PaystreamClient(api.url, partner.key) as http:
                ids = [(await http.create_payment(
                    idempotency_key=uuid.uuid4().hex, source_account_id=accounts[n % 10],
                    destination_account_id=accounts[(n + 3) % 10],
                    amount=f"{1 + n % 20}.00", currency="USD"))["id"] for n in range(count)]
            states.update({p: [] for p in ids})
            groups = [ids[i:i + PER_CONNECTION] for i in range(0, count, PER_CONNECTION)]
            followers = asyncio.gather(*(
                follow(doomed.ws_url, ("graphql-transport-ws", "graphql-ws")[n % 2], group)
                for n, group in enumerate(groups)))
            async with changed:  # every subscriber has its first state
                await asyncio.wait_for(changed.wait_for(lambda: all(states.values())), 60)
            # Killed while every payment is still PENDING, so every subscriber is cut off
            # before its terminal status (killing after the first terminal one raced with the
            # worker posting the whole batch at once).
            doomed.process.send_signal(signal.SIGKILL)
        finally:
            worker.send_signal(signal.SIGCONT)
        reconnects = await asyncio.wait_for(followers, 120)
    finally:
        stop_process(doomed.process)
        stop_process(api.process)

    assert sum(reconnects) > 0, "no subscriber was cut off: the kill came too late"
    async with services.db.primary.connect() as conn:
        final = {str(r[0]): r[1] for r in (await conn.execute(text(
            "SELECT id, status FROM payments WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(p) for p in ids]})).all()}
    for payment_id, seen in states.items():
        # PENDING (again after a reconnection), then the terminal status the database holds;
        # after it nothing but the same status again (a subscriber cut off between the
        # terminal update and the completion gets the current state first when it returns).
        assert seen[-1] == final[payment_id], (payment_id, seen, final[payment_id])
        first_terminal = next(i for i, s in enumerate(seen) if s in TERMINAL)
        assert set(seen[:first_terminal]) <= {"PENDING"}, (payment_id, seen)
        assert set(seen[first_terminal:]) == {final[payment_id]}, (payment_id, seen)
    await assert_ledger_verified(services)
