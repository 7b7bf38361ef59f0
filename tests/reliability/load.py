"""Steady GraphQL traffic for the fault scenarios: clients that pay and read back what they
paid, recording every answer, and checking as they go that nothing they are shown is older
than what they were shown before (read-your-writes, monotonic reads)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

CREATE = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"""
READ = """query($p: ID!, $a: ID!, $b: ID!) { payment(id: $p) { id status }
  a: account(id: $a) { balance } b: account(id: $b) { balance } }"""
STATUS_RANK = {"PENDING": 0, "SUCCEEDED": 1, "FAILED": 1}


@dataclass
class Payer:
    """One partner paying from its account ``a`` to its account ``b``: ``a`` only falls and
    ``b`` only rises, so any balance shown out of that order is older than one shown before."""

    key: str
    a: str
    b: str
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
            created = await self._post(payer, CREATE, {"input": {
                "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": payer.a,
                "destinationAccountId": payer.b, "amount": "1.00", "currency": "USD"}})
            if created is not None:
                payment = created["createPayment"]
                payer.payments[payment["id"]] = payment["status"]
                read = await self._post(payer, READ, {"p": payment["id"], "a": payer.a, "b": payer.b})
                if read is not None:
                    self._check(payer, payment["id"], read)
            async with self._changed:
                self.operations += 1
                self._changed.notify_all()

    def _check(self, payer: Payer, payment_id: str, read: dict[str, Any]) -> None:
        if read["payment"] is None:
            self.stale.append(f"own payment {payment_id} not found right after it was created")
            return
        status = read["payment"]["status"]
        if STATUS_RANK[status] < STATUS_RANK[payer.payments[payment_id]]:
            self.stale.append(f"{payment_id} went back to {status}")
        payer.payments[payment_id] = status if STATUS_RANK[status] else payer.payments[payment_id]
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
                          await partner.account(balance="0")))
    return made
