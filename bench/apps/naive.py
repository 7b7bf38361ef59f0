"""The naive server: paystream's schema shape resolved the obvious way. Every request looks up
its key and every object on the primary, one query each: no DataLoader, no cache, no replica.
Same SQL functions, same engine and driver, same server stack as the real API."""

from __future__ import annotations

import uuid

import strawberry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from strawberry.asgi import GraphQL

from paystream.config import Settings
from paystream.db import Database
from paystream.db.accounts import accounts_by_ids
from paystream.db.partners import owner_of_key
from paystream.db.payments import account_page, payments_by_ids
from paystream.domain.entities import AccountRow, PaymentRow
from paystream.domain.money import Money

db = Database(Settings().db)  # type: ignore[call-arg]


async def _account(account_id: uuid.UUID) -> AccountRow:
    async with db.primary.connect() as conn:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(bind=conn) as session:
            return (await accounts_by_ids(session, [account_id]))[account_id]  # type: ignore[arg-type]


@strawberry.type
class Account:
    row: strawberry.Private[AccountRow]
    partner: strawberry.Private[uuid.UUID]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    def name(self) -> str:
        return self.row.name

    @strawberry.field
    def currency(self) -> str:
        return self.row.currency

    @strawberry.field
    def balance(self) -> str | None:
        if self.row.partner_id != self.partner:
            return None
        return str(Money.from_minor(self.row.balance_minor, self.row.currency).to_decimal())

    @strawberry.field
    async def payments(self, first: int = 20) -> PaymentConnection:
        async with db.primary.connect() as conn:
            from sqlalchemy.ext.asyncio import AsyncSession

            async with AsyncSession(bind=conn) as session:
                rows = await account_page(session, self.row.id, limit=min(first, 100),  # type: ignore[arg-type]
                                          before=None, viewer=None)
        return PaymentConnection(edges=[PaymentEdge(node=Payment(row=r, partner=self.partner))
                                        for r in rows])


@strawberry.type
class Payment:
    row: strawberry.Private[PaymentRow]
    partner: strawberry.Private[uuid.UUID]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    def status(self) -> str:
        return self.row.status

    @strawberry.field
    def amount(self) -> str:
        return str(Money.from_minor(self.row.amount_minor, self.row.currency).to_decimal())

    @strawberry.field
    def currency(self) -> str:
        return self.row.currency

    @strawberry.field
    def reference(self) -> str | None:
        return self.row.reference

    @strawberry.field
    def created_at(self) -> str:
        return self.row.created_at.isoformat()

    @strawberry.field
    def updated_at(self) -> str:
        return self.row.updated_at.isoformat()

    @strawberry.field
    async def source_account(self) -> Account:
        return Account(row=await _account(self.row.source_account_id), partner=self.partner)

    @strawberry.field
    async def destination_account(self) -> Account:
        return Account(row=await _account(self.row.destination_account_id), partner=self.partner)


@strawberry.type
class PaymentEdge:
    node: Payment


@strawberry.type
class PaymentConnection:
    edges: list[PaymentEdge]


async def _partner(info: strawberry.Info) -> uuid.UUID:
    request: Request = info.context["request"]
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    async with db.primary.connect() as conn:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(bind=conn) as session:
            owner = await owner_of_key(session, token)  # type: ignore[arg-type]
    if owner is None:
        raise PermissionError("unknown key")
    return owner.partner_id


@strawberry.type
class Query:
    @strawberry.field
    async def payment(self, info: strawberry.Info, id: strawberry.ID) -> Payment | None:
        partner = await _partner(info)
        async with db.primary.connect() as conn:
            from sqlalchemy.ext.asyncio import AsyncSession

            async with AsyncSession(bind=conn) as session:
                row = (await payments_by_ids(session, [uuid.UUID(id)])).get(uuid.UUID(id))  # type: ignore[arg-type]
        return Payment(row=row, partner=partner) if row else None

    @strawberry.field
    async def account(self, info: strawberry.Info, id: strawberry.ID) -> Account | None:
        partner = await _partner(info)
        row = await _account(uuid.UUID(id))
        return Account(row=row, partner=partner) if row.partner_id == partner else None


async def healthz(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def metrics(request: object) -> PlainTextResponse:
    from paystream.metrics import render

    return PlainTextResponse(render())


app = Starlette(routes=[Route("/graphql", GraphQL(strawberry.Schema(query=Query)),
                              methods=["POST"]), Route("/healthz", healthz),
                        Route("/metrics", metrics)])
