"""createPayment: validate, accept durably, answer; the request is produced after.

Acceptance is the primary's commit of the PENDING payment together with its
``payments.requested`` message (the request outbox). The unique index on (partner,
idempotency key) decides between concurrent duplicates: exactly one creates the payment, the
others find it. After the commit the message goes to the process's publisher, which produces
it in a batch with others; whatever is not produced (broker down, process killed) the
worker's relay publishes. So UNAVAILABLE means exactly "the primary did not commit: nothing
was recorded", and a broker outage delays payments instead of refusing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ..cache.entities import status_event
from ..config import Settings
from ..db import Database, events, outbox
from ..db.payments import PaymentRow, insert_pending
from ..domain.currency import currency_exponent
from ..domain.errors import BadUserInput, IdempotencyConflict
from ..domain.ledger import SYSTEM_PARTNER_ID
from ..domain.lifecycle import validate_authorization_ttl
from ..domain.metadata import Metadata, validate_metadata
from ..domain.money import Money
from ..domain.validation import parse_account_id, validate_idempotency_key, validate_reference
from ..events.messages import PaymentRequested, PaymentStatusEvent
from .auth import WRITE, Caller
from .publisher import Outgoing, Publisher
from .reads import Reader

log = logging.getLogger("paystream.payments")


@dataclass(frozen=True, slots=True)
class CreatePayment:
    """The createPayment input as the client sent it."""

    idempotency_key: str
    source_account_id: str
    destination_account_id: str
    amount: str | Decimal
    currency: str
    reference: str | None = None
    capture: bool = True  # False: authorize (hold) until capturePayment or cancelPayment
    authorization_ttl_seconds: int | None = None
    metadata: Sequence[tuple[str, str]] | None = None  # (key, value) pairs, validated here


def request_hash(partner_id: uuid.UUID, source: uuid.UUID, destination: uuid.UUID,
                 money: Money, reference: str | None, *, capture: bool = True,
                 authorization_ttl_s: int | None = None, metadata: Metadata = ()) -> str:
    """What makes two requests "the same" for idempotency: every field but the key."""
    fields: list[object] = [str(partner_id), str(source), str(destination), money.minor,
                            money.currency, reference]
    if not capture:
        # Only for authorizations: a transfer's hash stays what it was before holds existed,
        # so a retry across the upgrade is still recognised as the same request.
        fields += [False, authorization_ttl_s]
    if metadata:
        # Likewise only when given: payments without metadata keep their hashes.
        fields.append({"metadata": [list(pair) for pair in metadata]})
    canonical = json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class PaymentService:
    def __init__(self, settings: Settings, db: Database, reader: Reader, publisher: Publisher) -> None:
        self._settings = settings
        self._db = db
        self._reader = reader
        self._publisher = publisher

    async def create(self, caller: Caller, request: CreatePayment) -> PaymentRow:
        caller.require(WRITE)
        key = validate_idempotency_key(request.idempotency_key)
        reference = validate_reference(request.reference)
        source_id = parse_account_id(request.source_account_id, field="sourceAccountId")
        destination_id = parse_account_id(request.destination_account_id, field="destinationAccountId")
        currency_exponent(request.currency)
        money = Money.parse(request.amount, request.currency, field="amount")
        ttl = validate_authorization_ttl(request.authorization_ttl_seconds, capture=request.capture)
        metadata = validate_metadata(request.metadata)
        if source_id == destination_id:
            raise BadUserInput("destinationAccountId must differ from sourceAccountId",
                               field="destinationAccountId")
        accounts = await self._reader.accounts([source_id, destination_id])
        source, destination = accounts.get(source_id), accounts.get(destination_id)
        # A foreign source account is reported exactly like a missing one.
        if source is None or not caller.owns(source.partner_id):
            raise BadUserInput("sourceAccountId: no such account", field="sourceAccountId")
        # Settlement accounts are the ledger's edge, not a party to payments.
        if destination is None or destination.partner_id == SYSTEM_PARTNER_ID:
            raise BadUserInput("destinationAccountId: no such account", field="destinationAccountId")
        if source.currency != money.currency or destination.currency != money.currency:
            raise BadUserInput(
                f"currency: payment is {money.currency}, source account is {source.currency},"
                f" destination account is {destination.currency}",
                field="currency", extensions={"reason": "CURRENCY_MISMATCH"},
            )

        now = datetime.now(UTC)
        draft = PaymentRow(
            id=uuid.uuid4(), partner_id=caller.partner_id, idempotency_key=key,
            request_hash=request_hash(caller.partner_id, source_id, destination_id, money, reference,
                                      capture=request.capture, authorization_ttl_s=ttl,
                                      metadata=metadata),
            source_account_id=source_id, destination_account_id=destination_id,
            amount_minor=money.minor, currency=money.currency, reference=reference,
            status="PENDING", failure_reason=None, version=1, created_at=now, updated_at=now,
            capture=request.capture, authorization_ttl_s=ttl, metadata_entries=metadata,
        )
        kafka = self._settings.kafka
        payload = _message(draft).encode()
        outbox_id: int | None = None
        event: PaymentStatusEvent | None = None
        async with self._db.write_session() as session:
            row, created = await insert_pending(session, draft)
            if created:
                outbox_id = await outbox.add(session, kafka.requested_topic,
                                             str(row.source_account_id), payload.decode())
                # The PENDING event is in the events feed from the acceptance's commit on;
                # its cursor comes with it on the status stream.
                [event] = await events.record(
                    session, [status_event(row, source, destination, with_accounts=False)])
        if not created:
            if row.request_hash != draft.request_hash:
                raise IdempotencyConflict(
                    "idempotencyKey was already used with a different request", field="idempotencyKey"
                )
            # Its request was committed with it the first time: nothing to produce again.
            return row
        # Visible to payment(id) at once, whatever the replica's lag.
        await self._reader.remember_payment(row)
        # The PENDING event tells account activity subscribers of the new payment; best
        # effort on the stream (not in the outbox), since a watcher starts from the current
        # state anyway, and a resumed accountActivity replays it from the feed.
        assert event is not None
        self._publisher.submit(
            Outgoing(kafka.requested_topic, str(row.source_account_id).encode(), payload, outbox_id),
            Outgoing(kafka.status_topic, str(row.id).encode(), event.encode()),
        )
        return row


def _message(row: PaymentRow) -> PaymentRequested:
    return PaymentRequested(
        payment_id=row.id, partner_id=row.partner_id, idempotency_key=row.idempotency_key,
        request_hash=row.request_hash, source_account_id=row.source_account_id,
        destination_account_id=row.destination_account_id, amount_minor=row.amount_minor,
        currency=row.currency, reference=row.reference, created_at=row.created_at.isoformat(),
    )
