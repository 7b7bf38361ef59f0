"""Posting refunds, in one transaction on the primary.

The payments are locked first (as the API locks one to accept a refund, and as every posting
does), then the refunds, then every account of the batch in id order. Each PENDING refund is
checked again under those locks (``domain.lifecycle.refund_outcome``): it never takes the
payment's refunded amount past what the payment moved, and it FAILS with INSUFFICIENT_FUNDS
when the destination's available balance no longer covers it. A SUCCEEDED refund is a REFUND
posting of its own (the refund's id as posting id): destination -amount, source +amount.
Either outcome is a new version of the payment and a status event carrying the refund.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import text

from ..db import WriteSession
from ..db.ledger import insert_entries
from ..db.payments import COLUMNS as PAYMENT_COLUMNS
from ..db.refunds import COLUMNS as REFUND_COLUMNS
from ..db.refunds import RefundRow
from ..domain.entities import AccountRow, PaymentRow
from ..domain.ledger import EntryKind, posting_time
from ..domain.lifecycle import refund_outcome
from ..domain.status import RefundStatus
from ..events.messages import PaymentCommand, PaymentRequested, PaymentStatusEvent, RefundRequested
from .posting import BatchResult, Traces, write_status_events

_LOCK_PAYMENTS = text(
    f"SELECT {', '.join(c.key for c in PAYMENT_COLUMNS)} FROM payments"
    " WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)
_LOCK_REFUNDS = text(
    f"SELECT {', '.join(c.key for c in REFUND_COLUMNS)} FROM refunds"
    " WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)
_LOCK_ACCOUNTS = text(
    "SELECT id, partner_id, name, currency, balance_minor, version, created_at, updated_at,"
    " held_minor, metadata_entries FROM accounts WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id"
    " FOR NO KEY UPDATE"
)
_SET_REFUND = text(
    "UPDATE refunds SET status = :status, failure_reason = :reason, version = version + 1,"
    " updated_at = :now WHERE id = :id"
)
_SET_PAYMENT = text(
    "UPDATE payments SET refunded_minor = :refunded, version = :version, updated_at = :now"
    " WHERE id = :id"
)
_SET_ACCOUNT = text(
    "UPDATE accounts SET balance_minor = :balance, version = :version, updated_at = :now"
    " WHERE id = :id"
)


def disagreement(request: RefundRequested, refund: RefundRow | None,
                 payment: PaymentRow | None) -> str | None:
    if refund is None or payment is None:
        return "no such refund"
    for name, message_value, row_value in (
        ("payment_id", request.payment_id, refund.payment_id),
        ("partner_id", request.partner_id, refund.partner_id),
        ("amount_minor", request.amount_minor, refund.amount_minor),
        ("source_account_id", request.source_account_id, payment.source_account_id),
    ):
        if message_value != row_value:
            return f"message disagrees with its refund row: {name}"
    return None


async def post_refunds(session: WriteSession, requests: Sequence[RefundRequested], *,
                       status_topic: str, traces: Traces | None = None) -> BatchResult:
    """Post every still-PENDING refund of the batch, in message order. The caller commits."""
    payments = {row[0]: PaymentRow(*row) for row in await session.execute(
        _LOCK_PAYMENTS, {"ids": sorted({r.payment_id for r in requests})})}
    refunds = {row[0]: RefundRow(*row) for row in await session.execute(
        _LOCK_REFUNDS, {"ids": sorted({r.refund_id for r in requests})})}
    rejected: list[tuple[PaymentRequested | PaymentCommand | RefundRequested, str]] = []
    chosen: dict[uuid.UUID, RefundRow] = {}
    for request in requests:
        refund = refunds.get(request.refund_id)
        reason = disagreement(request, refund, payments.get(request.payment_id))
        if reason is not None:
            rejected.append((request, reason))
        elif refund is not None and refund.status == RefundStatus.PENDING:
            chosen.setdefault(refund.id, refund)
    skipped = len(requests) - len(chosen) - len(rejected)
    if not chosen:
        return BatchResult(events=[], outbox_ids=[], skipped=skipped, rejected=rejected)
    account_ids = sorted({a for r in chosen.values() for a in (
        payments[r.payment_id].source_account_id, payments[r.payment_id].destination_account_id)})
    accounts = {row[0]: AccountRow(*row)
                for row in await session.execute(_LOCK_ACCOUNTS, {"ids": account_ids})}
    now = posting_time(datetime.now(UTC), (a.updated_at for a in accounts.values()))
    events: list[PaymentStatusEvent] = []
    changed: dict[uuid.UUID, PaymentRow] = {}
    touched: dict[uuid.UUID, AccountRow] = {}
    for refund in chosen.values():
        payment = changed.get(refund.payment_id, payments[refund.payment_id])
        source = accounts[payment.source_account_id]
        destination = accounts[payment.destination_account_id]
        captured = payment.captured_amount_minor or 0
        failure = refund_outcome(captured_minor=captured, refunded_minor=payment.refunded_minor,
                                 amount_minor=refund.amount_minor,
                                 destination_available_minor=destination.available_minor)
        status = RefundStatus.FAILED if failure else RefundStatus.SUCCEEDED
        refunded = payment.refunded_minor
        if failure is None:
            refunded += refund.amount_minor
            destination = replace(destination, version=destination.version + 1, updated_at=now,
                                  balance_minor=destination.balance_minor - refund.amount_minor)
            source = replace(source, version=source.version + 1, updated_at=now,
                             balance_minor=source.balance_minor + refund.amount_minor)
            for account in (destination, source):
                accounts[account.id] = touched[account.id] = account
                await session.execute(_SET_ACCOUNT, {"id": account.id, "now": now,
                                                     "balance": account.balance_minor,
                                                     "version": account.version})
            await insert_entries(session, refund.id, EntryKind.REFUND, payment.id, [
                (destination.id, -refund.amount_minor, destination.balance_minor),
                (source.id, refund.amount_minor, source.balance_minor)], now)
        reason = failure.value if failure else None
        await session.execute(_SET_REFUND, {"id": refund.id, "status": status.value,
                                            "reason": reason, "now": now})
        payment = replace(payment, refunded_minor=refunded, version=payment.version + 1,
                          updated_at=now)
        changed[payment.id] = payment
        await session.execute(_SET_PAYMENT, {"id": payment.id, "refunded": refunded,
                                             "version": payment.version, "now": now})
        done = replace(refund, status=status.value, failure_reason=reason,
                       version=refund.version + 1, updated_at=now)
        event = replace(PaymentStatusEvent.of(payment, accounts[payment.source_account_id],
                                     accounts[payment.destination_account_id]),
                        refund=done.to_json())
        events.append(event)
    events, outbox_ids, payloads = await write_status_events(
        session, events, status_topic=status_topic, traces=traces)
    return BatchResult(events=events, outbox_ids=outbox_ids, payloads=payloads, skipped=skipped,
                       payments=list(changed.values()), accounts=list(touched.values()),
                       rejected=rejected)
