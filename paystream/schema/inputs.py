"""GraphQL input types."""

from __future__ import annotations

from decimal import Decimal as PyDecimal

import strawberry

from .scalars import Decimal


@strawberry.input
class CreatePaymentInput:
    idempotency_key: str = strawberry.field(
        description="1 to 255 characters; the same key with the same request returns the same payment."
    )
    source_account_id: strawberry.ID
    destination_account_id: strawberry.ID
    amount: Decimal = strawberry.field(description='Exact, as a string: "125.50".')
    currency: str = strawberry.field(description="ISO 4217 code, e.g. USD.")
    reference: str | None = strawberry.field(default=None, description="At most 140 characters.")


@strawberry.input
class CreateAccountInput:
    idempotency_key: str = strawberry.field(
        description="1 to 255 characters; the same key with the same request returns the same account."
    )
    name: str = strawberry.field(description="1 to 200 characters.")
    currency: str = strawberry.field(description="ISO 4217 code, e.g. USD.")


__all__ = ["CreateAccountInput", "CreatePaymentInput", "PyDecimal"]
