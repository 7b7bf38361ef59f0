"""GraphQL input types."""

from __future__ import annotations

from decimal import Decimal as PyDecimal

import strawberry

from .metadata import MetadataEntryInput
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
    capture: bool | None = strawberry.field(
        default=True, description="false: hold the amount (AUTHORIZED) until captured or canceled."
    )
    authorization_ttl_seconds: int | None = strawberry.field(
        default=None, description="With capture false: how long the hold lives before the system "
        "releases it (CANCELED, AUTHORIZATION_EXPIRED); default 7 days, at most 30 days."
    )
    metadata: list[MetadataEntryInput] | None = strawberry.field(
        default=None, description="Your own key-value pairs (at most 20); part of the request "
        "for idempotency.")


@strawberry.input
class CapturePaymentInput:
    payment_id: strawberry.ID
    amount: Decimal | None = strawberry.field(
        default=None, description="At most the authorized amount; omitted: all of it. The rest "
        "of the hold is released."
    )


@strawberry.input
class CancelPaymentInput:
    payment_id: strawberry.ID


@strawberry.input
class RefundPaymentInput:
    idempotency_key: str = strawberry.field(
        description="1 to 255 characters; the same key with the same request returns the same refund."
    )
    payment_id: strawberry.ID
    amount: Decimal | None = strawberry.field(
        default=None, description="At most what is left to refund; omitted: all of it."
    )
    reason: str | None = strawberry.field(default=None, description="At most 140 characters.")
    metadata: list[MetadataEntryInput] | None = strawberry.field(
        default=None, description="Your own key-value pairs (at most 20); part of the request "
        "for idempotency.")


@strawberry.input
class CreateAccountInput:
    idempotency_key: str = strawberry.field(
        description="1 to 255 characters; the same key with the same request returns the same account."
    )
    name: str = strawberry.field(description="1 to 200 characters.")
    currency: str = strawberry.field(description="ISO 4217 code, e.g. USD.")
    metadata: list[MetadataEntryInput] | None = strawberry.field(
        default=None, description="Your own key-value pairs (at most 20); part of the request "
        "for idempotency.")


__all__ = [
    "CancelPaymentInput",
    "CapturePaymentInput",
    "CreateAccountInput",
    "CreatePaymentInput",
    "MetadataEntryInput",
    "PyDecimal",
    "RefundPaymentInput",
]


@strawberry.input
class CreateWebhookEndpointInput:
    url: str = strawberry.field(
        description="https only (http://127.0.0.1:PORT in dev); never a loopback, link-local, "
        "private or metadata address after DNS resolution."
    )
    events: list[str] | None = strawberry.field(
        default=None, description="Event types to send, e.g. payment.succeeded; default: all."
    )
