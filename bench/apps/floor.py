"""The floor: the same query shape on a minimal Strawberry app, on the same server stack
(uvicorn, uvloop, httptools), answering a constant object with no I/O at all."""

from __future__ import annotations

import strawberry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from strawberry.asgi import GraphQL


@strawberry.type
class Account:
    id: strawberry.ID
    name: str
    currency: str
    balance: str | None


@strawberry.type
class Payment:
    id: strawberry.ID
    status: str
    amount: str
    currency: str
    reference: str | None
    created_at: str
    updated_at: str
    source_account: Account
    destination_account: Account


_ACCOUNT = Account(id=strawberry.ID("0b0e7a6e-3c3f-4a53-9a53-8d4a1d1d0001"), name="source",
                   currency="USD", balance="100.00")
_PAYMENT = Payment(
    id=strawberry.ID("0b0e7a6e-3c3f-4a53-9a53-8d4a1d1d0002"), status="SUCCEEDED", amount="1.00",
    currency="USD", reference=None, created_at="2026-11-25T10:00:00+00:00",
    updated_at="2026-11-25T10:00:01+00:00", source_account=_ACCOUNT, destination_account=_ACCOUNT,
)


@strawberry.type
class Query:
    @strawberry.field
    def payment(self, id: strawberry.ID) -> Payment | None:
        return _PAYMENT


async def healthz(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/graphql", GraphQL(strawberry.Schema(query=Query)),
                              methods=["POST"]), Route("/healthz", healthz)])
