"""capturePayment and cancelPayment: accepted durably, answered at once, posted by the worker.

Acceptance is the primary's commit of the request recorded on the locked payment row
(``requested_action``) together with its ``payments.requested`` message, keyed by the source
account so that it is consumed after the request that places the hold. The answer is the
payment as it stands (AUTHORIZED, or PENDING while the hold is still being placed); the
change follows on the status stream. The rules are ``domain.lifecycle``'s; only the owner of
the payment's source account may act, and for anyone else the payment does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ..config import Settings
from ..db import Database, outbox
from ..db.holds import lock_for_action, record_action
from ..domain.entities import PaymentRow
from ..domain.errors import NotFound
from ..domain.lifecycle import Action, Decision, decide_cancel, decide_capture
from ..domain.money import Money
from ..domain.status import PaymentStatus
from ..domain.validation import parse_uuid
from ..events.messages import CommandType, PaymentCommand
from ..tracing import current_carrier
from .auth import WRITE, Caller
from .publisher import Outgoing, Publisher
from .reads import Reader


@dataclass(frozen=True, slots=True)
class CapturePayment:
    payment_id: str
    amount: str | Decimal | None = None  # None: all of the authorization


class LifecycleService:
    def __init__(self, settings: Settings, db: Database, reader: Reader,
                 publisher: Publisher) -> None:
        self._settings = settings
        self._db = db
        self._reader = reader
        self._publisher = publisher

    async def capture(self, caller: Caller, request: CapturePayment) -> PaymentRow:
        return await self._act(caller, request.payment_id, Action.CAPTURE, request.amount)

    async def cancel(self, caller: Caller, payment_id: str) -> PaymentRow:
        return await self._act(caller, payment_id, Action.CANCEL, None)

    async def _act(self, caller: Caller, raw_id: str, action: Action,
                   amount: str | Decimal | None) -> PaymentRow:
        caller.require(WRITE)
        payment_id = parse_uuid(raw_id)
        if payment_id is None:
            raise NotFound("no such payment", field="paymentId")
        topic = self._settings.kafka.requested_topic
        async with self._db.write_session() as session:
            locked = await lock_for_action(session, payment_id)
            # The payment's partner is the owner of its source account (createPayment
            # requires it, and accounts never change hands).
            if locked is None or not caller.owns(locked[0].partner_id):
                raise NotFound("no such payment", field="paymentId")
            row, requested_raw, requested_minor = locked
            requested = Action(requested_raw) if requested_raw else None
            status = PaymentStatus(row.status)
            capture_minor: int | None = None
            if action is Action.CAPTURE:
                capture_minor = (row.amount_minor if amount is None
                                 else Money.parse(amount, row.currency, field="amount").minor)
                expires = row.authorization_expires_at
                decision = decide_capture(
                    status=status, capture=row.capture, amount_minor=row.amount_minor,
                    captured_minor=row.captured_minor, requested=requested,
                    requested_capture_minor=requested_minor, capture_minor=capture_minor,
                    expired=expires is not None and expires <= datetime.now(UTC))
            else:
                decision = decide_cancel(status=status, capture=row.capture, requested=requested)
            if decision is Decision.UNCHANGED:
                return row
            await record_action(session, row.id, action.value, capture_minor)
            message = _command(row, action, capture_minor).encode()
            trace = current_carrier()
            outbox_id = await outbox.add(session, topic, str(row.source_account_id),
                                         message.decode(), trace=trace)
        self._publisher.submit(
            Outgoing(topic, str(row.source_account_id).encode(), message, outbox_id, trace))
        return row


def _command(row: PaymentRow, action: Action, capture_minor: int | None) -> PaymentCommand:
    kind: CommandType = ("payment.capture_requested" if action is Action.CAPTURE
                         else "payment.cancel_requested")
    return PaymentCommand(type=kind, payment_id=row.id, partner_id=row.partner_id,
                          source_account_id=row.source_account_id, amount_minor=capture_minor,
                          created_at=datetime.now(UTC).isoformat())


__all__ = ["CapturePayment", "LifecycleService"]
