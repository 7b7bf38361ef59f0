"""createPayments' answer: one result per input, in input order, holding the payment or the
error createPayment would have raised for that input."""

from __future__ import annotations

import strawberry

from ..domain.errors import PaystreamError
from .types import Payment


@strawberry.type(description="Why one input of createPayments was not accepted: the code, "
                 "message and field createPayment would have given for it.")
class CreatePaymentError:
    code: str = strawberry.field(description="As extensions.code: BAD_USER_INPUT, "
                                 "IDEMPOTENCY_CONFLICT, ...")
    message: str
    field: str | None = strawberry.field(
        description="The input's field at fault (relative to the input: amount, metadata[2].key).")
    reason: str | None = strawberry.field(
        default=None, description="As extensions.reason, where createPayment gives one "
        "(CURRENCY_MISMATCH, DUPLICATE_IDEMPOTENCY_KEY).")

    @classmethod
    def of(cls, error: PaystreamError) -> CreatePaymentError:
        reason = error.graphql_extensions().get("reason")
        return cls(code=error.code.value, message=error.message, field=error.field,
                   reason=reason if isinstance(reason, str) else None)


@strawberry.type(description="One input's outcome; exactly one of payment and error is set.")
class CreatePaymentResult:
    payment: Payment | None = None
    error: CreatePaymentError | None = None
