"""Steady GraphQL traffic for the fault scenarios: clients that pay and read back what they
paid, recording every answer, and checking as they go that nothing they are shown is older
than what they were shown before (read-your-writes, monotonic reads).

The traffic is mixed: besides transfers from ``a`` to ``b``, each client authorizes payments
from ``a`` to ``b`` and captures or cancels them at once (the command queued behind the hold),
and pays from ``c`` to ``d`` and refunds half of each such payment once it is shown SUCCEEDED
(refunds move money back, so they stay off ``a`` and ``b``, whose balances must only fall and
rise)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

CREATE = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"""
CAPTURE = """mutation($input: CapturePaymentInput!) { capturePayment(input: $input) { id } }"""
CANCEL = """mutation($input: CancelPaymentInput!) { cancelPayment(input: $input) { id } }"""
REFUND = """mutation($input: RefundPaymentInput!) { refundPayment(input: $input) { id status } }"""
READ = """query($p: ID!, $a: ID!, $b: ID!) { payment(id: $p) { id status }
  a: account(id: $a) { balance } b: account(id: $b) { balance } }"""
STATUS_RANK = {"PENDING": 0, "AUTHORIZED": 1, "SUCCEEDED": 2, "FAILED": 2, "CANCELED": 2}


@dataclass
class Payer:
    """One partner paying from its account ``a`` to its account ``b``: ``a`` only falls and
    ``b`` only rises, so any balance shown out of that order is older than one shown before."""

    key: str
    a: str
    b: str
    c: str = ""  # pays d, and refunds: off the balances checked for monotonic reads
    d: str = ""
    turn: int = 0
    to_refund: str | None = None  # the last c -> d payment, refunded once shown SUCCEEDED
    refunds: list[str] = field(default_factory=list)
    lowest_a: Decimal = Decimal("Infinity")
    highest_b: Decimal = Decimal("-Infinity")
    payments: dict[str, str] = field(default_factory=dict)  # id -> most advanced status shown


@dataclass
class Load:
    http: httpx.AsyncClient
    payers: list[Payer]
    errors: list[Any] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    operations: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def payment_ids(self) -> list[str]:
        return [p for payer in self.payers for p in payer.payments]

    @property
    def refund_ids(self) -> list[str]:
        return [r for payer in self.payers for r in payer.refunds]

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(payer)) for payer in self.payers]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def more(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` more operations have been answered."""
        target = self.operations + count
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.operations >= target), timeout)

    async def _post(self, payer: Payer, query: str, variables: dict[str, Any]) -> dict[str, Any] | None:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables},
                                        headers={"Authorization": f"Bearer {payer.key}"})
        body = response.json() if response.status_code == 200 else None
        if body is None or body.get("errors"):
            self.errors.append((response.status_code, response.text[:500]))
            return None
        return dict(body["data"])

    async def _run(self, payer: Payer) -> None:
        while not self._stop.is_set():
            payer.turn += 1
            kind = payer.turn % 4 if payer.c else 0
            source, destination = (payer.c, payer.d) if kind == 3 else (payer.a, payer.b)
            created = await self._post(payer, CREATE, {"input": {
                "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
                "destinationAccountId": destination, "amount": "1.00", "currency": "USD",
                "capture": kind != 2}})
            if created is not None:
                payment = created["createPayment"]
                payer.payments[payment["id"]] = payment["status"]
                if kind == 2:  # a hold, captured (every other time) or canceled at once
                    ending = CAPTURE if payer.turn % 8 == 2 else CANCEL
                    await self._post(payer, ending, {"input": {"paymentId": payment["id"]}})
                if kind == 3:
                    await self._refund_last(payer, payment["id"])
                read = await self._post(payer, READ, {"p": payment["id"], "a": payer.a, "b": payer.b})
                if read is not None:
                    self._check(payer, payment["id"], read)
            async with self._changed:
                self.operations += 1
                self._changed.notify_all()

    async def _refund_last(self, payer: Payer, newest: str) -> None:
        """Refund half of the previous c -> d payment if it is shown SUCCEEDED by now."""
        previous, payer.to_refund = payer.to_refund, newest
        if previous is None:
            return
        read = await self._post(payer, READ, {"p": previous, "a": payer.a, "b": payer.b})
        if read is None or read["payment"]["status"] != "SUCCEEDED":
            return
        refunded = await self._post(payer, REFUND, {"input": {
            "idempotencyKey": uuid.uuid4().hex, "paymentId": previous, "amount": "0.50"}})
        if refunded is not None:
            payer.refunds.append(refunded["refundPayment"]["id"])

    def _check(self, payer: Payer, payment_id: str, read: dict[str, Any]) -> None:
        if read["payment"] is None:
            self.stale.append(f"own payment {payment_id} not found right after it was created")
            return
        status = read["payment"]["status"]
        if STATUS_RANK[status] < STATUS_RANK[payer.payments[payment_id]]:
            self.stale.append(f"{payment_id} went back to {status}")
        if STATUS_RANK[status] > STATUS_RANK[payer.payments[payment_id]]:
            payer.payments[payment_id] = status
        a, b = Decimal(read["a"]["balance"]), Decimal(read["b"]["balance"])
        if a > payer.lowest_a or b < payer.highest_b:
            self.stale.append(f"balances went back: a {a} after {payer.lowest_a}, "
                              f"b {b} after {payer.highest_b}")
        payer.lowest_a, payer.highest_b = min(a, payer.lowest_a), max(b, payer.highest_b)


async def payers(make_partner: Any, count: int, opening: str = "1000.00") -> list[Payer]:
    made = []
    for _ in range(count):
        partner = await make_partner()
        made.append(Payer(partner.key, await partner.account(balance=opening),
                          await partner.account(balance="0"),
                          await partner.account(balance=opening), await partner.account(balance="0")))
    return made
