"""The API's side of captures and cancels: the payment locked with what was asked of it, and
the request recorded on it (committed with its outbox message, like createPayment)."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from ..domain.entities import PaymentRow
from .engine import WriteSession
from .payments import COLUMNS

_LOCK = text(
    f"SELECT {', '.join(c.key for c in COLUMNS)}, requested_action, requested_capture_minor"
    " FROM payments WHERE id = :id FOR NO KEY UPDATE"
)
_RECORD = text(
    "UPDATE payments SET requested_action = :action, requested_capture_minor = :minor"
    " WHERE id = :id AND requested_action IS NULL"
)


async def lock_for_action(session: WriteSession, payment_id: uuid.UUID
                          ) -> tuple[PaymentRow, str | None, int | None] | None:
    """The payment, locked until the caller's transaction ends, with the capture or cancel
    already accepted for it (action, capture amount), or None when there is no such payment."""
    row = (await session.execute(_LOCK, {"id": payment_id})).first()
    if row is None:
        return None
    return PaymentRow(*row[:-2]), row[-2], row[-1]


async def record_action(session: WriteSession, payment_id: uuid.UUID, action: str,
                        capture_minor: int | None) -> None:
    """Record an accepted capture or cancel on the (locked) payment; one per payment."""
    await session.execute(_RECORD, {"id": payment_id, "action": action, "minor": capture_minor})
