"""Payments: the idempotent insert of the write path and batched reads."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import any_, bindparam, delete, select, text
from sqlalchemy.dialects.postgresql import insert

from .accounts import FAR_FUTURE, MAX_UUID, uuid_array
from .engine import ReadSession, WriteSession
from .models import Payment


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """A payment as read, detached from any session (safe to cache)."""

    id: uuid.UUID
    partner_id: uuid.UUID
    idempotency_key: str
    request_hash: str
    source_account_id: uuid.UUID
    destination_account_id: uuid.UUID
    amount_minor: int
    currency: str
    reference: str | None
    status: str
    failure_reason: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    capture: bool = True  # False: an authorization (hold) until captured or canceled
    authorization_ttl_s: int | None = None
    authorization_expires_at: datetime | None = None  # while AUTHORIZED
    captured_minor: int | None = None  # set by a capture
    refunded_minor: int = 0  # the sum of SUCCEEDED refunds

    @property
    def captured_amount_minor(self) -> int | None:
        """What the payment moved: the capture, or the whole amount of a transfer."""
        if self.status != "SUCCEEDED":
            return None
        return self.captured_minor if self.captured_minor is not None else self.amount_minor


COLUMNS = (
    Payment.id,
    Payment.partner_id,
    Payment.idempotency_key,
    Payment.request_hash,
    Payment.source_account_id,
    Payment.destination_account_id,
    Payment.amount_minor,
    Payment.currency,
    Payment.reference,
    Payment.status,
    Payment.failure_reason,
    Payment.version,
    Payment.created_at,
    Payment.updated_at,
    Payment.capture,
    Payment.authorization_ttl_s,
    Payment.authorization_expires_at,
    Payment.captured_minor,
    Payment.refunded_minor,
)


# Built once: a statement built per call costs its cache-key walk on every payment.
_INSERT_PENDING = (
    insert(Payment)
    .values({column.key: bindparam(column.key) for column in COLUMNS})
    .on_conflict_do_nothing(constraint="payments_partner_idempotency_key")
    .returning(*COLUMNS)
)


async def insert_pending(session: WriteSession, row: PaymentRow) -> tuple[PaymentRow, bool]:
    """Insert a PENDING payment unless (partner, idempotency key) exists already.

    Returns the stored row and whether this call created it. Concurrent callers with the same
    key serialize on the unique index, so exactly one of them creates the payment.
    """
    values = {column.key: getattr(row, column.key) for column in COLUMNS}
    created = (await session.execute(_INSERT_PENDING, values)).first()
    if created is not None:
        return PaymentRow(*created), True  # type: ignore[call-arg]  # a Row unpacks to the fields
    existing = (
        await session.execute(
            select(*COLUMNS).where(
                Payment.partner_id == row.partner_id, Payment.idempotency_key == row.idempotency_key
            )
        )
    ).one()
    return PaymentRow(*existing), False  # type: ignore[call-arg]  # a Row of the dataclass's columns, in order


async def delete_pending(session: WriteSession, payment_id: uuid.UUID) -> bool:
    """Withdraw a PENDING payment whose request never reached the broker."""
    result = await session.execute(
        delete(Payment).where(Payment.id == payment_id, Payment.status == "PENDING")
    )
    return bool(getattr(result, "rowcount", 0))


_BY_IDS = select(*COLUMNS).where(Payment.id == any_(uuid_array([])))


async def payments_by_ids(
    session: ReadSession | WriteSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, PaymentRow]:
    """One statement for any number of ids."""
    if not ids:
        return {}
    rows = await session.execute(_BY_IDS, {"ids": sorted(set(ids))})
    return {row[0]: PaymentRow(*row) for row in rows}  # type: ignore[call-arg]  # as above


# Newest first across both roles of the account; each half walks its own index.
_PAGE = """
SELECT * FROM (
  (SELECT {cols} FROM payments
    WHERE source_account_id = :account AND (created_at, id) < (:before_at, :before_id)
    {visible} ORDER BY created_at DESC, id DESC LIMIT :limit)
  UNION ALL
  (SELECT {cols} FROM payments
    WHERE destination_account_id = :account AND source_account_id <> :account
      AND (created_at, id) < (:before_at, :before_id)
    {visible} ORDER BY created_at DESC, id DESC LIMIT :limit)
) page ORDER BY created_at DESC, id DESC LIMIT :limit
"""
# Only payments whose other side belongs to the caller (a counterparty's account).
_VISIBLE = (
    "AND EXISTS (SELECT 1 FROM accounts o WHERE o.partner_id = :viewer"
    " AND o.id IN (payments.source_account_id, payments.destination_account_id))"
)
_COLUMN_NAMES = ", ".join(column.key for column in COLUMNS)


async def account_page(
    session: ReadSession | WriteSession, account_id: uuid.UUID, *, limit: int,
    before: tuple[datetime, uuid.UUID] | None, viewer: uuid.UUID | None,
) -> list[PaymentRow]:
    """Up to ``limit`` payments touching the account, newest first, strictly after the cursor
    ``before`` (created_at, id). ``viewer`` restricts to payments whose accounts it owns."""
    before_at, before_id = before or (FAR_FUTURE, MAX_UUID)
    sql = _PAGE.format(cols=_COLUMN_NAMES, visible=_VISIBLE if viewer else "")
    params: dict[str, object] = {"account": account_id, "before_at": before_at,
                                 "before_id": before_id, "limit": limit}
    if viewer:
        params["viewer"] = viewer
    rows = await session.execute(text(sql), params)
    return [PaymentRow(*row) for row in rows]
