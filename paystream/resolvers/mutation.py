"""Mutation resolvers."""

from __future__ import annotations

import strawberry

from ..domain.errors import PaystreamError
from ..metrics import PAYMENTS_ACCEPTED
from ..schema.bulk import CreatePaymentError, CreatePaymentResult
from ..schema.context import Info
from ..schema.inputs import (
    CancelPaymentInput,
    CapturePaymentInput,
    CreateAccountInput,
    CreatePaymentInput,
    CreateWebhookEndpointInput,
    RefundPaymentInput,
)
from ..schema.metadata import metadata_pairs
from ..schema.types import Account, Payment, Refund
from ..schema.webhooks import WebhookEndpoint, WebhookEndpointCreated
from ..services.accounts import CreateAccount
from ..services.lifecycle import CapturePayment
from ..services.payments import CreatePayment
from ..services.refunds import RefundPayment
from .completion import Completable


def _request(input: CreatePaymentInput) -> CreatePayment:
    return CreatePayment(
        idempotency_key=input.idempotency_key,
        source_account_id=input.source_account_id,
        destination_account_id=input.destination_account_id,
        amount=input.amount,
        currency=input.currency,
        reference=input.reference,
        capture=input.capture is not False,
        authorization_ttl_seconds=input.authorization_ttl_seconds,
        metadata=metadata_pairs(input.metadata),
    )


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Enqueue a payment. Answers PENDING once the broker has it; the same "
        "idempotencyKey with the same request returns the same payment."
    )
    async def create_payment(self, info: Info, input: CreatePaymentInput) -> Payment:
        caller = info.context.require_caller()
        row = await info.context.services.payments.create(caller, _request(input))
        # Counted here, at the one createPayment entry, once the service has the payment.
        PAYMENTS_ACCEPTED.inc()
        info.context.loaders.payment.prime(row.id, row)
        return Payment(row=row)

    @strawberry.mutation(
        description="Create many payments at once (at most PAYSTREAM_LIMITS__MAX_BULK_PAYMENTS, "
        "1000 by default; each takes a mutation rate-limit token). Each input is validated and "
        "answered on its own, in input order: the payment, or the error createPayment would "
        "give. The accepted ones commit together; UNAVAILABLE means none was recorded."
    )
    async def create_payments(self, info: Info,
                              inputs: list[CreatePaymentInput]) -> list[CreatePaymentResult]:
        caller = info.context.require_caller()
        answers = await info.context.services.payments.create_many(
            caller, [_request(i) for i in inputs])
        # Completed by plan where the selection allows (resolvers/completion.py).
        results = Completable(CreatePaymentResult(error=CreatePaymentError.of(answer))
                              if isinstance(answer, PaystreamError)
                              else CreatePaymentResult(payment=Payment(row=answer))
                              for answer in answers)
        rows = {answer.id: answer for answer in answers if not isinstance(answer, PaystreamError)}
        info.context.loaders.payment.prime_many(rows)  # one call: prime() is per key
        # Accepted answers, as createPayment counts them (an idempotent replay too).
        PAYMENTS_ACCEPTED.inc(len(rows))
        return results

    @strawberry.mutation(
        description="Open a zero-balance account owned by the caller; the same idempotencyKey "
        "with the same request returns the same account. Funding is an operator action."
    )
    async def create_account(self, info: Info, input: CreateAccountInput) -> Account:
        row = await info.context.services.accounts.create(
            info.context.require_caller(),
            CreateAccount(idempotency_key=input.idempotency_key, name=input.name,
                          currency=input.currency, metadata=metadata_pairs(input.metadata)),
        )
        info.context.loaders.account.prime(row.id, row)
        return Account(row=row)

    @strawberry.mutation(
        description="Capture an AUTHORIZED payment (all of it when amount is omitted; the rest "
        "of the hold is released). Answers with the payment as it stands; SUCCEEDED follows on "
        "the status stream. A payment captured already is returned unchanged."
    )
    async def capture_payment(self, info: Info, input: CapturePaymentInput) -> Payment:
        row = await info.context.services.lifecycle.capture(
            info.context.require_caller(),
            CapturePayment(payment_id=input.payment_id, amount=input.amount),
        )
        info.context.loaders.payment.prime(row.id, row)
        return Payment(row=row)

    @strawberry.mutation(
        description="Release an AUTHORIZED payment's hold. Answers with the payment as it "
        "stands; CANCELED follows on the status stream. A canceled payment is returned unchanged."
    )
    async def cancel_payment(self, info: Info, input: CancelPaymentInput) -> Payment:
        row = await info.context.services.lifecycle.cancel(info.context.require_caller(),
                                                           input.payment_id)
        info.context.loaders.payment.prime(row.id, row)
        return Payment(row=row)

    @strawberry.mutation(
        description="Refund a SUCCEEDED payment, whole (amount omitted) or in part. Answers "
        "PENDING; the outcome follows on the status stream. The same idempotencyKey with the "
        "same request returns the same refund."
    )
    async def refund_payment(self, info: Info, input: RefundPaymentInput) -> Refund:
        caller = info.context.require_caller()
        row = await info.context.services.refunds.refund(caller, RefundPayment(
            idempotency_key=input.idempotency_key, payment_id=input.payment_id,
            amount=input.amount, reason=input.reason, metadata=metadata_pairs(input.metadata)))
        payment = await info.context.loaders.payment.load(row.payment_id)
        assert payment is not None  # refunds reference their payment by foreign key
        return Refund(row=row, currency=payment.currency)

    @strawberry.mutation(
        description="Register a webhook endpoint for the caller's events (all when events is "
        "omitted); answers its signing secret, shown this once."
    )
    async def create_webhook_endpoint(self, info: Info,
                                      input: CreateWebhookEndpointInput) -> WebhookEndpointCreated:
        created = await info.context.services.webhooks.create(
            info.context.require_caller(), input.url, input.events)
        return WebhookEndpointCreated(endpoint=WebhookEndpoint(row=created.endpoint),
                                      secret=created.secret)

    @strawberry.mutation(
        description="Delete one of the caller's webhook endpoints with its pending deliveries; "
        "false when there is no such endpoint."
    )
    async def delete_webhook_endpoint(self, info: Info, id: strawberry.ID) -> bool:
        return await info.context.services.webhooks.delete(info.context.require_caller(), id)

    @strawberry.mutation(
        description="A new signing secret, shown this once; the old one stays valid for 24 h "
        "(both signatures are sent meanwhile)."
    )
    async def rotate_webhook_secret(self, info: Info, id: strawberry.ID) -> WebhookEndpointCreated:
        created = await info.context.services.webhooks.rotate(info.context.require_caller(), id)
        return WebhookEndpointCreated(endpoint=WebhookEndpoint(row=created.endpoint),
                                      secret=created.secret)

    @strawberry.mutation(
        description="Enable one of the caller's webhook endpoints again after it was DISABLED: "
        "the events held meanwhile, and those given up while it was failing, are sent now, in "
        "order per payment. An ENABLED endpoint is answered unchanged."
    )
    async def enable_webhook_endpoint(self, info: Info, id: strawberry.ID) -> WebhookEndpoint:
        row = await info.context.services.webhooks.enable(info.context.require_caller(), id)
        return WebhookEndpoint(row=row)
