"""paymentStatus and accountActivity over both websocket protocols, against real API processes,
the real worker and the real broker."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from paystream.client import (
    ACCOUNT_ACTIVITY, PAYMENT_STATUS, GraphQLErrors, PaystreamClient, Subscriptions,
)

from .conftest import ApiProcess, Partner

PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]


@contextmanager
def held(worker: subprocess.Popen[bytes]) -> Iterator[None]:
    """The worker stopped (SIGSTOP) for the block: payments stay PENDING until it ends."""
    worker.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        worker.send_signal(signal.SIGCONT)


async def pay(api: ApiProcess, partner: Partner, source: str, destination: str,
              amount: str = "10.00") -> dict[str, Any]:
    async with PaystreamClient(api.url, partner.key) as http:
        return await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount=amount, currency="USD",
        )


async def collect(stream: Any, field: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every payload until the subscription completes."""

    async def run() -> list[dict[str, Any]]:
        return [data[field] async for data in stream]

    return await asyncio.wait_for(run(), timeout)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("amount", "status", "reason"), [
    ("10.00", "SUCCEEDED", None), ("500.00", "FAILED", "INSUFFICIENT_FUNDS"),
])
async def test_payment_status_from_pending_to_terminal(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any,
    protocol: str, amount: str, status: str, reason: str | None,
) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    async with Subscriptions(api.ws_url, partner.key, protocol) as ws:  # type: ignore[arg-type]
        with held(worker):
            payment = await pay(api, partner, source, destination, amount)
            stream = ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]})
            first = await anext(stream)
            assert first["paymentStatus"]["status"] == "PENDING"
        rest = await collect(stream, "paymentStatus")
    assert [p["status"] for p in rest] == [status]
    final = rest[0]
    assert final["id"] == payment["id"] and final["failureReason"] == reason
    balances = (final["sourceAccount"]["balance"], final["destinationAccount"]["balance"])
    assert balances == (("90.00", "10.00") if status == "SUCCEEDED" else ("100.00", "0.00"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_late_subscriber_gets_terminal_state_and_completion(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, protocol: str,
) -> None:
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    payment = await pay(api, partner, source, destination)
    async with Subscriptions(api.ws_url, partner.key, protocol) as ws:  # type: ignore[arg-type]
        # The first subscriber waits for the end; the second comes after it.
        first = await collect(ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}), "paymentStatus")
        assert first[-1]["status"] == "SUCCEEDED"
        late = await collect(ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}), "paymentStatus")
    assert [p["status"] for p in late] == ["SUCCEEDED"]
    assert late[0]["sourceAccount"]["balance"] == "90.00"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_account_activity_streams_each_change_once(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, protocol: str,
) -> None:
    partner, other = await make_partner(), await make_partner()
    source = await partner.account(balance="100.00")
    destination = await other.account(balance="0")
    async with Subscriptions(api.ws_url, partner.key, protocol) as ws:  # type: ignore[arg-type]
        stream = ws.results(await ws.start(ACCOUNT_ACTIVITY, {"id": source}))
        # The subscription is live once it delivers something: a first payment's update.
        probe = await pay(api, partner, source, destination, "1.00")
        seen: dict[str, list[str]] = {}
        payments: list[dict[str, Any]] = []

        async def until_all_terminal() -> None:
            async for data in stream:
                update = data["accountActivity"]
                seen.setdefault(update["id"], []).append(update["status"])
                if update["id"] == probe["id"] and not payments:
                    payments.extend([await pay(api, partner, source, destination, "30.00")
                                     for _ in range(4)])
                if payments and all(seen.get(p["id"], ["PENDING"])[-1] != "PENDING"
                                    for p in payments):
                    return

        await asyncio.wait_for(until_all_terminal(), 30)
    seen.pop(probe["id"])
    assert set(seen) == {p["id"] for p in payments}
    for statuses in seen.values():
        # Each change once, in order: PENDING (if it came before the posting) then terminal.
        assert statuses in (["PENDING", "SUCCEEDED"], ["PENDING", "FAILED"], ["SUCCEEDED"], ["FAILED"])
    # 99.00 after the probe: three of 30.00 fit, the fourth does not.
    assert sorted(s[-1] for s in seen.values()) == ["FAILED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_foreign_or_missing_payment_subscription_is_refused_alike(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, protocol: str,
) -> None:
    owner, stranger = await make_partner(), await make_partner()
    source, destination = await owner.account(), await owner.account()
    payment = await pay(api, owner, source, destination)
    refusals = []
    async with Subscriptions(api.ws_url, stranger.key, protocol) as ws:  # type: ignore[arg-type]
        for query, target in ((PAYMENT_STATUS, payment["id"]), (PAYMENT_STATUS, str(uuid.uuid4())),
                              (ACCOUNT_ACTIVITY, source), (ACCOUNT_ACTIVITY, str(uuid.uuid4()))):
            with pytest.raises(GraphQLErrors) as refused:
                await collect(ws.subscribe(query, {"id": target}), "x", timeout=10)
            refusals.append([(e["message"], e["extensions"]["code"]) for e in refused.value.errors])
    assert refusals[0] == refusals[1] == [("no such payment", "NOT_FOUND")]
    assert refusals[2] == refusals[3] == [("no such account", "NOT_FOUND")]
