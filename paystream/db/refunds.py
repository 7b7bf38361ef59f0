"""Refunds: the idempotent insert of refundPayment and the reads of Payment.refunds."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import insert

from ..domain.metadata import Metadata, metadata_from_json, metadata_json
from .accounts import uuid_array
from .engine import ReadSession, WriteSession
from .models import Refund


@dataclass(frozen=True, slots=True)
class RefundRow:
    """A refund as read, detached from any session."""

    id: uuid.UUID
    partner_id: uuid.UUID
    idempotency_key: str
    request_hash: str
    payment_id: uuid.UUID
    amount_minor: int
    reason: str | None
    status: str
    failure_reason: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    metadata_entries: Metadata = ()  # the partner's (key, value) pairs, in its order

    def __post_init__(self) -> None:
        if not isinstance(self.metadata_entries, tuple):
            object.__setattr__(self, "metadata_entries", metadata_from_json(self.metadata_entries))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name, value in data.items():
            if isinstance(value, uuid.UUID):
                data[name] = str(value)
            elif isinstance(value, datetime):
                data[name] = value.isoformat()
        data["metadata_entries"] = metadata_json(self.metadata_entries)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RefundRow:
        """The inverse of :meth:`to_json` (as status events carry a refund)."""
        return cls(
            id=uuid.UUID(str(data["id"])), partner_id=uuid.UUID(str(data["partner_id"])),
            idempotency_key=data["idempotency_key"], request_hash=data["request_hash"],
            payment_id=uuid.UUID(str(data["payment_id"])), amount_minor=int(data["amount_minor"]),
            reason=data.get("reason"), status=data["status"],
            failure_reason=data.get("failure_reason"), version=int(data["version"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            metadata_entries=metadata_from_json(data.get("metadata_entries")),
        )


COLUMNS = tuple(getattr(Refund, name) for name in RefundRow.__dataclass_fields__)

_INSERT = (
    insert(Refund)
    .values({column.key: bindparam(column.key) for column in COLUMNS})
    .on_conflict_do_nothing(constraint="refunds_partner_idempotency_key")
    .returning(*COLUMNS)
)
_BY_KEY = select(*COLUMNS).where(Refund.partner_id == bindparam("partner_id"),
                                 Refund.idempotency_key == bindparam("idempotency_key"))
# What PENDING and SUCCEEDED refunds claim of a payment: a new refund must fit in the rest.
_CLAIMED = text(
    "SELECT coalesce(sum(amount_minor), 0) FROM refunds"
    " WHERE payment_id = :payment AND status IN ('PENDING', 'SUCCEEDED')"
)
_OF_PAYMENTS = (select(*COLUMNS).where(Refund.payment_id == any_(uuid_array([])))
                .order_by(Refund.created_at, Refund.id))


async def insert_refund(session: WriteSession, row: RefundRow) -> tuple[RefundRow, bool]:
    """Insert a PENDING refund unless (partner, idempotency key) exists; (stored, created)."""
    values = {column.key: getattr(row, column.key) for column in COLUMNS}
    values["metadata_entries"] = metadata_json(row.metadata_entries)
    created = (await session.execute(_INSERT, values)).first()
    if created is not None:
        return RefundRow(*created), True
    existing = (await session.execute(_BY_KEY, values)).one()
    return RefundRow(*existing), False


async def existing_refund(session: WriteSession, partner_id: uuid.UUID,
                          idempotency_key: str) -> RefundRow | None:
    found = (await session.execute(_BY_KEY, {"partner_id": partner_id,
                                             "idempotency_key": idempotency_key})).first()
    return None if found is None else RefundRow(*found)


async def claimed_minor(session: WriteSession, payment_id: uuid.UUID) -> int:
    """The sum of the payment's PENDING and SUCCEEDED refunds (call with the payment locked)."""
    return int((await session.execute(_CLAIMED, {"payment": payment_id})).scalar_one())


_BY_IDS = select(*COLUMNS).where(Refund.id == any_(uuid_array([])))


async def refunds_by_ids(session: ReadSession | WriteSession,
                         ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, RefundRow]:
    """One statement for any number of refund ids."""
    if not ids:
        return {}
    return {row[0]: RefundRow(*row)
            for row in await session.execute(_BY_IDS, {"ids": sorted(set(ids))})}


async def refunds_of_payments(session: ReadSession | WriteSession,
                              payment_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[RefundRow]]:
    """Each payment's refunds, oldest first; one statement for any number of payments."""
    found: dict[uuid.UUID, list[RefundRow]] = {p: [] for p in payment_ids}
    if payment_ids:
        for row in await session.execute(_OF_PAYMENTS, {"ids": sorted(set(payment_ids))}):
            refund = RefundRow(*row)
            found[refund.payment_id].append(refund)
    return found
