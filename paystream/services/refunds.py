"""refundPayment: a SUCCEEDED payment paid back, whole or in parts, accepted durably.

The payment row is locked while the refund is accepted, so concurrent refunds of one payment
serialize: each must fit in what the payment moved minus its PENDING and SUCCEEDED refunds
(REFUND_EXCEEDS_PAYMENT otherwise). The PENDING refund commits with its ``refund.requested``
message (keyed by the payment's source account); the worker checks again under its locks and
posts it, or FAILS it with INSUFFICIENT_FUNDS when the destination no longer holds the money.
Only the owner of the payment's source account may refund; for anyone else the payment does
not exist.

Accepting a refund is a change of its payment (``Payment.refunds`` gains a PENDING refund), so
it is a new version of the payment with a status event carrying the refund: ``refund.pending``
in the events feed, on ``payments.status`` and so to webhooks. That event is committed with the
refund (the feed's row and an outbox row, ahead of the request's), so it is never lost, and it
precedes the outcome, which the worker posts as the version after it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from ..config import Settings
from ..db import Database, ReadSession, events, outbox
from ..db.accounts import accounts_by_ids
from ..db.holds import lock_for_action
from ..db.payments import new_version
from ..db.refunds import (
    RefundRow,
    claimed_minor,
    existing_refund,
    insert_refund,
    refunds_of_payments,
)
from ..domain.errors import IdempotencyConflict, NotFound
from ..domain.lifecycle import decide_refund
from ..domain.metadata import Metadata, validate_metadata
from ..domain.money import Money
from ..domain.status import PaymentStatus
from ..domain.validation import parse_uuid, validate_idempotency_key, validate_reference
from ..events.messages import PaymentStatusEvent, RefundRequested
from ..tracing import current_carrier
from .auth import READ, WRITE, Caller
from .publisher import Outgoing, Publisher
from .reads import Reader


@dataclass(frozen=True, slots=True)
class RefundPayment:
    """The refundPayment input as the client sent it."""

    idempotency_key: str
    payment_id: str
    amount: str | Decimal | None = None  # None: all that is left
    reason: str | None = None
    metadata: Sequence[tuple[str, str]] | None = None


def refund_request_hash(partner_id: uuid.UUID, payment_id: uuid.UUID, amount: str | None,
                        reason: str | None, metadata: Metadata = ()) -> str:
    """Every field but the key; the amount as sent (omitted means "what is left"); metadata
    only when given, so refunds made before it keep their hashes."""
    fields: list[object] = [str(partner_id), str(payment_id), amount, reason]
    if metadata:
        fields.append({"metadata": [list(pair) for pair in metadata]})
    canonical = json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class RefundService:
    def __init__(self, settings: Settings, db: Database, reader: Reader,
                 publisher: Publisher) -> None:
        self._settings = settings
        self._db = db
        self._reader = reader
        self._publisher = publisher

    async def refund(self, caller: Caller, request: RefundPayment) -> RefundRow:
        caller.require(WRITE)
        key = validate_idempotency_key(request.idempotency_key)
        reason = validate_reference(request.reason, field="reason")
        metadata = validate_metadata(request.metadata)
        payment_id = parse_uuid(request.payment_id)
        if payment_id is None:
            raise NotFound("no such payment", field="paymentId")
        kafka = self._settings.kafka
        topic = kafka.requested_topic
        async with self._db.write_session() as session:
            locked = await lock_for_action(session, payment_id)
            if locked is None or not caller.owns(locked[0].partner_id):
                raise NotFound("no such payment", field="paymentId")
            payment = locked[0]
            requested = (None if request.amount is None
                         else Money.parse(request.amount, payment.currency, field="amount"))
            digest = refund_request_hash(
                caller.partner_id, payment.id,
                None if requested is None else str(requested.minor), reason, metadata)
            # A retry is answered before the rules: the first attempt already claimed its part.
            known = await existing_refund(session, caller.partner_id, key)
            if known is not None:
                if known.request_hash != digest:
                    raise IdempotencyConflict(
                        "idempotencyKey was already used with a different request",
                        field="idempotencyKey")
                return known
            amount = decide_refund(
                status=PaymentStatus(payment.status),
                captured_minor=payment.captured_amount_minor,
                refunded_minor=await claimed_minor(session, payment.id),
                refund_minor=None if requested is None else requested.minor)
            now = datetime.now(UTC)
            row, created = await insert_refund(session, RefundRow(
                id=uuid.uuid4(), partner_id=caller.partner_id, idempotency_key=key,
                request_hash=digest, payment_id=payment.id, amount_minor=amount, reason=reason,
                status="PENDING", failure_reason=None, version=1, created_at=now,
                updated_at=now, metadata_entries=metadata))
            if not created:  # a concurrent duplicate committed first (the payment lock
                return row   # serializes them, so this is a race we lost by a hair)
            # refund.pending: the payment's next version, its event in the feed and in the
            # outbox before the request, so the relay too publishes it before the worker can
            # post the outcome (the version after it).
            payment = await new_version(session, payment.id, now)
            parties = await accounts_by_ids(
                session, [payment.source_account_id, payment.destination_account_id])
            trace = current_carrier()
            [event] = await events.record(session, [replace(
                PaymentStatusEvent.of(payment, parties[payment.source_account_id],
                                      parties[payment.destination_account_id],
                                      with_accounts=False),
                refund=row.to_json())])
            announced = event.encode()
            event_outbox_id = await outbox.add(session, kafka.status_topic, str(payment.id),
                                               announced.decode(), trace=trace)
            message = RefundRequested(
                refund_id=row.id, payment_id=payment.id, partner_id=caller.partner_id,
                source_account_id=payment.source_account_id, amount_minor=amount,
                created_at=now.isoformat()).encode()
            outbox_id = await outbox.add(session, topic, str(payment.source_account_id),
                                         message.decode(), trace=trace)
        # The new version is shown at once, whatever the replica's lag (read-your-writes).
        await self._reader.remember_payment(payment)
        self._publisher.submit(
            Outgoing(kafka.status_topic, str(payment.id).encode(), announced, event_outbox_id,
                     trace),
            Outgoing(topic, str(payment.source_account_id).encode(), message, outbox_id, trace))
        return row

    async def of_payments(self, caller: Caller, payment_ids: list[uuid.UUID]
                          ) -> dict[uuid.UUID, list[RefundRow]]:
        """The refunds of payments the caller may see (the caller checked that), from the
        primary: a refund just accepted or posted is shown whatever a replica's lag."""
        caller.require(READ)

        async def read(session: ReadSession) -> dict[uuid.UUID, list[RefundRow]]:
            return await refunds_of_payments(session, payment_ids)

        return await self._db.read(read, primary=True)
