"""Captures, cancels and expiries of authorized payments, in one transaction on the primary.

Like :mod:`.posting`, the locked payment row is the source of truth: a capture posts the
amount recorded on the row when the API accepted it, and a command whose payment is no longer
AUTHORIZED (captured, canceled or expired meanwhile; a redelivery) changes nothing. Accounts
are locked in id order, after the payments, as the posting of payments does.

- capture: a CAPTURE posting (the payment's id as posting id): source -captured, destination
  +captured; the hold is closed (CAPTURED) and all of it leaves the source's ``held_minor``,
  so the part not captured is released. SUCCEEDED with ``captured_minor``.
- cancel / expiry: the hold is RELEASED, nothing is posted. CANCELED (an expiry with
  failureReason AUTHORIZATION_EXPIRED).
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
from ..domain.entities import AccountRow, PaymentRow
from ..domain.ledger import EntryKind, posting_time
from ..domain.lifecycle import capture_outcome
from ..domain.status import FailureReason, PaymentStatus, check_transition
from ..events.messages import (
    PaymentCommand,
    PaymentRequested,
    PaymentStatusEvent,
    RefundRequested,
)
from .posting import BatchResult, Traces, write_status_events

CAPTURE = "payment.capture_requested"
CANCEL = "payment.cancel_requested"
EXPIRE = "system.authorization_expired"  # not a message: the expiry sweep's own action

_PAYMENT_LIST = ", ".join(c.key for c in PAYMENT_COLUMNS)
_LOCK_PAYMENTS = text(
    f"SELECT {_PAYMENT_LIST}, requested_action, requested_capture_minor FROM payments"
    " WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)
# SKIP LOCKED: a payment being captured or canceled right now is left to that transaction.
# One with a capture or cancel accepted before it expired is left to that request (it is in
# the outbox, so it arrives): what the API accepted is what happens.
_LOCK_EXPIRED = text(
    f"SELECT {_PAYMENT_LIST}, requested_action, requested_capture_minor FROM payments"
    " WHERE status = 'AUTHORIZED' AND authorization_expires_at <= :now"
    "   AND requested_action IS NULL"
    " ORDER BY id LIMIT :limit FOR NO KEY UPDATE SKIP LOCKED"
)
_LOCK_ACCOUNTS = text(
    "SELECT id, partner_id, name, currency, balance_minor, version, created_at, updated_at,"
    " held_minor, metadata_entries FROM accounts WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id"
    " FOR NO KEY UPDATE"
)
_SET_PAYMENT = text(
    "UPDATE payments SET status = :status, failure_reason = :reason, version = :version,"
    " captured_minor = :captured, authorization_expires_at = NULL, updated_at = :now"
    " WHERE id = :id"
)
_SET_ACCOUNT = text(
    "UPDATE accounts SET balance_minor = :balance, held_minor = :held, version = :version,"
    " updated_at = :now WHERE id = :id"
)
_CLOSE_HOLD = text(
    "UPDATE holds SET status = :status, captured_minor = :captured, closed_at = :now"
    " WHERE payment_id = :id AND status = 'OPEN' RETURNING amount_minor"
)


def disagreement(command: PaymentCommand, row: PaymentRow | None, requested: str | None,
                 requested_minor: int | None) -> str | None:
    """Why a command does not match its payment row (or what the API recorded on it)."""
    if row is None:
        return "no such payment"
    if command.partner_id != row.partner_id:
        return "message disagrees with its payment row: partner_id"
    if command.source_account_id != row.source_account_id:
        return "message disagrees with its payment row: source_account_id"
    action = "CAPTURE" if command.type == CAPTURE else "CANCEL"
    if requested != action:
        return f"no {action.lower()} was accepted for this payment"
    if command.type == CAPTURE and command.amount_minor != requested_minor:
        return "message disagrees with its payment row: amount_minor"
    return None


async def post_commands(session: WriteSession, commands: Sequence[PaymentCommand], *,
                        status_topic: str, traces: Traces | None = None) -> BatchResult:
    """Apply each command whose payment is still AUTHORIZED. The caller commits."""
    locked = await _lock(session, _LOCK_PAYMENTS, {"ids": list({c.payment_id for c in commands})})
    rejected: list[tuple[PaymentRequested | PaymentCommand | RefundRequested, str]] = []
    chosen: dict[uuid.UUID, str] = {}
    for command in commands:
        row, requested, requested_minor = locked.get(command.payment_id, (None, None, None))
        reason = disagreement(command, row, requested, requested_minor)
        if reason is not None:
            rejected.append((command, reason))
        elif row is not None and row.status == PaymentStatus.AUTHORIZED:
            chosen.setdefault(row.id, command.type)
    result = await _apply(session, {i: (locked[i][0], locked[i][2], t) for i, t in chosen.items()},
                          status_topic=status_topic, traces=traces)
    return replace(result, skipped=len(commands) - len(chosen) - len(rejected),
                   rejected=rejected)


async def expire_due(session: WriteSession, *, limit: int, status_topic: str) -> BatchResult:
    """Release up to ``limit`` authorizations past their expiry. The caller commits."""
    locked = await _lock(session, _LOCK_EXPIRED, {"now": datetime.now(UTC), "limit": limit})
    return await _apply(session, {i: (row, None, EXPIRE) for i, (row, _, _) in locked.items()},
                        status_topic=status_topic)


async def _lock(session: WriteSession, statement: object, params: dict[str, object]
                ) -> dict[uuid.UUID, tuple[PaymentRow, str | None, int | None]]:
    rows = await session.execute(statement, params)  # type: ignore[call-overload]  # a text() or select() built by the caller
    return {row[0]: (PaymentRow(*row[:-2]), row[-2], row[-1]) for row in rows}


async def _apply(session: WriteSession,
                 work: dict[uuid.UUID, tuple[PaymentRow, int | None, str]], *,
                 status_topic: str, traces: Traces | None = None) -> BatchResult:
    if not work:
        return BatchResult(events=[], outbox_ids=[], skipped=0)
    account_ids = sorted({a for row, _, _ in work.values()
                          for a in (row.source_account_id, row.destination_account_id)})
    accounts = {row[0]: AccountRow(*row)
                for row in await session.execute(_LOCK_ACCOUNTS, {"ids": account_ids})}
    now = posting_time(datetime.now(UTC), (a.updated_at for a in accounts.values()))
    events: list[PaymentStatusEvent] = []
    payments: list[PaymentRow] = []
    changed: dict[uuid.UUID, AccountRow] = {}
    for payment_id in sorted(work):
        row, capture_minor, action = work[payment_id]
        source = accounts[row.source_account_id]
        destination = accounts[row.destination_account_id]
        status = PaymentStatus.SUCCEEDED if action == CAPTURE else PaymentStatus.CANCELED
        check_transition(PaymentStatus(row.status), status)
        reason = FailureReason.AUTHORIZATION_EXPIRED.value if action == EXPIRE else None
        captured: int | None = None
        if action == CAPTURE:
            outcome = capture_outcome(authorized_minor=row.amount_minor,
                                      capture_minor=capture_minor)
            captured = outcome.captured
            source = replace(source, balance_minor=source.balance_minor - captured,
                             held_minor=source.held_minor - row.amount_minor)
            destination = replace(destination,
                                  balance_minor=destination.balance_minor + captured)
            await insert_entries(session, row.id, EntryKind.CAPTURE, row.id, [
                (source.id, -captured, source.balance_minor),
                (destination.id, captured, destination.balance_minor)], now)
        else:
            source = replace(source, held_minor=source.held_minor - row.amount_minor)
        closed = (await session.execute(_CLOSE_HOLD, {
            "id": row.id, "status": "CAPTURED" if captured else "RELEASED",
            "captured": captured, "now": now})).first()
        if closed is None or int(closed[0]) != row.amount_minor:
            raise RuntimeError(f"payment {row.id} is AUTHORIZED without its open hold")
        touched = (source, destination) if captured else (source,)
        for account in touched:
            account = replace(account, version=account.version + 1, updated_at=now)
            accounts[account.id] = changed[account.id] = account
            await session.execute(_SET_ACCOUNT, {
                "id": account.id, "balance": account.balance_minor, "held": account.held_minor,
                "version": account.version, "now": now})
        payment = replace(row, status=status.value, failure_reason=reason, captured_minor=captured,
                          authorization_expires_at=None, version=row.version + 1, updated_at=now)
        await session.execute(_SET_PAYMENT, {
            "id": row.id, "status": payment.status, "reason": reason, "version": payment.version,
            "captured": captured, "now": now})
        payments.append(payment)
        events.append(PaymentStatusEvent.of(payment, accounts[row.source_account_id],
                                   accounts[row.destination_account_id]))
    events, outbox_ids, payloads = await write_status_events(
        session, events, status_topic=status_topic, traces=traces)
    return BatchResult(events=events, outbox_ids=outbox_ids, payloads=payloads, skipped=0,
                       payments=payments, accounts=list(changed.values()))
