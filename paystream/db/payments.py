"""Payments: the idempotent insert of the write path and batched reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import any_, delete, select, text

from ..domain.entities import PaymentRow, field_names
from ..domain.metadata import metadata_json
from .accounts import FAR_FUTURE, MAX_UUID, uuid_array
from .engine import ReadSession, WriteSession
from .models import Payment

COLUMNS = tuple(getattr(Payment, name) for name in field_names(PaymentRow))
"""The payments table's columns that make a :class:`PaymentRow`, in its field order."""


_COLUMN_NAMES = ", ".join(column.key for column in COLUMNS)

# The insert of acceptance: one statement for any number of payments, in the order given
# (the caller sorts by partner and idempotency key, so two transactions sharing keys wait on
# each other's unique-index entries in one order and cannot deadlock).
_INSERT_PENDING_MANY = text(
    f"INSERT INTO payments ({', '.join(column.key for column in COLUMNS)})"
    " SELECT id, partner_id, idempotency_key, request_hash, source_account_id,"
    "   destination_account_id, amount_minor, currency, reference, 'PENDING', NULL, 1,"
    "   created_at, created_at, capture, authorization_ttl_s, NULL, NULL, 0,"
    "   CAST(metadata_entries AS jsonb)"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:partners AS uuid[]), CAST(:keys AS text[]),"
    "   CAST(:hashes AS text[]), CAST(:sources AS uuid[]), CAST(:destinations AS uuid[]),"
    "   CAST(:amounts AS bigint[]), CAST(:currencies AS text[]), CAST(:references AS text[]),"
    "   CAST(:created AS timestamptz[]), CAST(:captures AS boolean[]),"
    "   CAST(:ttls AS integer[]), CAST(:metadata AS text[]))"
    "   WITH ORDINALITY AS u(id, partner_id, idempotency_key, request_hash, source_account_id,"
    "     destination_account_id, amount_minor, currency, reference, created_at, capture,"
    "     authorization_ttl_s, metadata_entries, ord)"
    " ORDER BY ord"
    " ON CONFLICT ON CONSTRAINT payments_partner_idempotency_key DO NOTHING"
    " RETURNING id"
)
_EXISTING_BY_KEYS = text(
    f"SELECT {_COLUMN_NAMES} FROM payments"
    " WHERE (partner_id, idempotency_key) IN (SELECT * FROM unnest(CAST(:partners AS uuid[]),"
    "   CAST(:keys AS text[])))"
)
_INSERT_METADATA_MANY = text(
    "INSERT INTO payment_metadata (account_id, payment_id, key, value, created_at)"
    " SELECT a, p, k, v, c FROM unnest(CAST(:accounts AS uuid[]), CAST(:payments AS uuid[]),"
    "   CAST(:keys AS text[]), CAST(:values AS text[]), CAST(:created AS timestamptz[]))"
    "   AS u(a, p, k, v, c)"
)


IdempotencySlot = tuple[uuid.UUID, str]
"""(partner, idempotency key): what names one payment whatever request created it."""


async def insert_pending_many(session: WriteSession, rows: Sequence[PaymentRow]
                              ) -> dict[IdempotencySlot, tuple[PaymentRow, bool]]:
    """Insert PENDING payments (of any partners), each unless its (partner, idempotency key)
    exists already: one INSERT for all of them, one SELECT for the keys that existed, one
    INSERT for their metadata index rows. Returns, by (partner, key), the stored row and
    whether this call created it. Rows are PENDING drafts: status PENDING, version 1, updated
    when created, nothing captured, expired or refunded (what the statement stores). Slots
    must be distinct; rows are inserted in the order given (callers sort them, so that two
    transactions sharing keys cannot deadlock)."""
    if not rows:
        return {}
    if not all(_is_draft(r) for r in rows):
        raise ValueError("insert_pending_many takes PENDING drafts only")
    created = await session.execute(_INSERT_PENDING_MANY, {
        "ids": [r.id for r in rows], "partners": [r.partner_id for r in rows],
        "keys": [r.idempotency_key for r in rows], "hashes": [r.request_hash for r in rows],
        "sources": [r.source_account_id for r in rows],
        "destinations": [r.destination_account_id for r in rows],
        "amounts": [r.amount_minor for r in rows], "currencies": [r.currency for r in rows],
        "references": [r.reference for r in rows], "created": [r.created_at for r in rows],
        "captures": [r.capture for r in rows], "ttls": [r.authorization_ttl_s for r in rows],
        "metadata": [json.dumps(metadata_json(r.metadata_entries)) for r in rows],
    })
    # A created row is its draft as given: the statement stores each of its fields as is (the
    # constants above are a draft's), so only the ids come back, not the rows to decode
    # (tests/integration/test_acceptance.py reads them back).
    inserted = {row_id for (row_id,) in created}
    stored: dict[IdempotencySlot, tuple[PaymentRow, bool]] = {
        (r.partner_id, r.idempotency_key): (r, True) for r in rows if r.id in inserted}
    missing = [r for r in rows if r.id not in inserted]
    if missing:
        for values in await session.execute(_EXISTING_BY_KEYS, {
                "partners": [r.partner_id for r in missing],
                "keys": [r.idempotency_key for r in missing]}):
            row = PaymentRow(*values)
            stored[row.partner_id, row.idempotency_key] = (row, False)
    index = [(account, row.id, key, value, row.created_at)
             for row, new in stored.values() if new
             for account in (row.source_account_id, row.destination_account_id)
             for key, value in row.metadata_entries]
    if index:
        await session.execute(_INSERT_METADATA_MANY, {
            "accounts": [i[0] for i in index], "payments": [i[1] for i in index],
            "keys": [i[2] for i in index], "values": [i[3] for i in index],
            "created": [i[4] for i in index]})
    return stored


def _is_draft(row: PaymentRow) -> bool:
    """Whether the row is what the pending insert stores for it, field for field."""
    return (row.status == "PENDING" and row.failure_reason is None and row.version == 1
            and row.updated_at == row.created_at and row.authorization_expires_at is None
            and row.captured_minor is None and row.refunded_minor == 0)


async def delete_pending(session: WriteSession, payment_id: uuid.UUID) -> bool:
    """Withdraw a PENDING payment whose request never reached the broker."""
    await session.execute(
        text("DELETE FROM payment_metadata m USING payments p WHERE m.payment_id = p.id"
             " AND p.id = :id AND p.status = 'PENDING'"), {"id": payment_id})
    result = await session.execute(
        delete(Payment).where(Payment.id == payment_id, Payment.status == "PENDING")
    )
    return bool(getattr(result, "rowcount", 0))


_NEW_VERSION = text(
    "UPDATE payments SET version = version + 1, updated_at = greatest(updated_at, :now)"
    f" WHERE id = :id RETURNING {_COLUMN_NAMES}"
)


async def new_version(session: WriteSession, payment_id: uuid.UUID, now: datetime) -> PaymentRow:
    """The next version of a payment (the caller holds its row lock) whose own columns did not
    change but what hangs on it did: a refund accepted on it (``Payment.refunds``). Its status
    event is then an event of its own, ``refund.pending``, with its own id and place."""
    row = (await session.execute(_NEW_VERSION, {"id": payment_id, "now": now})).one()
    return PaymentRow(*row)


_BY_IDS = select(*COLUMNS).where(Payment.id == any_(uuid_array([])))


async def payments_by_ids(
    session: ReadSession | WriteSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, PaymentRow]:
    """One statement for any number of ids."""
    if not ids:
        return {}
    rows = await session.execute(_BY_IDS, {"ids": sorted(set(ids))})
    return {row[0]: PaymentRow(*row) for row in rows}


@dataclass(frozen=True, slots=True)
class PaymentFilter:
    """What a payments page may be narrowed to (GraphQL ``PaymentFilter``), validated.
    Dates are inclusive; metadata matches one entry with the key, the value, or both."""

    status: str | None = None
    direction: str | None = None  # INCOMING (the account is the destination) or OUTGOING
    created_from: datetime | None = None
    created_to: datetime | None = None
    reference: str | None = None
    metadata_key: str | None = None
    metadata_value: str | None = None

    @property
    def by_metadata(self) -> bool:
        return self.metadata_key is not None or self.metadata_value is not None

    def sql(self, table: str = "payments") -> tuple[str, dict[str, object]]:
        """The conditions on the payment row (``table``) and their parameters."""
        conditions: list[str] = []
        params: dict[str, object] = {}
        # created_to is not here: account_page folds it into the page's start position.
        for column, name, value in (("status", "f_status", self.status),
                                    ("created_at >=", "f_from", self.created_from),
                                    ("reference", "f_reference", self.reference)):
            if value is not None:
                operator = "" if column.endswith(("=", "<", ">")) else " ="
                conditions.append(f"{table}.{column}{operator} :{name}")
                params[name] = value
        return "".join(f" AND {c}" for c in conditions), params


NO_FILTER = PaymentFilter()

# Newest first across both roles of the account; each half walks its own index (with a
# status filter, the role's status index; with a reference, the role's reference index).
_OUTGOING = """
  (SELECT {cols} FROM payments
    WHERE source_account_id = :account AND (created_at, id) < (:before_at, :before_id)
    {visible}{filters} ORDER BY created_at DESC, id DESC LIMIT :limit)"""
_INCOMING = """
  (SELECT {cols} FROM payments
    WHERE destination_account_id = :account AND source_account_id <> :account
      AND (created_at, id) < (:before_at, :before_id)
    {visible}{filters} ORDER BY created_at DESC, id DESC LIMIT :limit)"""
# A metadata filter walks payment_metadata's index for (account, key and/or value) in page
# order, then each payment by its primary key: a range whatever the matches' density.
_BY_METADATA = """
SELECT {pcols} FROM payment_metadata m JOIN payments ON payments.id = m.payment_id
 WHERE m.account_id = :account {metadata}
   AND (m.created_at, m.payment_id) < (:before_at, :before_id)
   {direction}{visible}{filters}
 ORDER BY m.created_at DESC, m.payment_id DESC LIMIT :limit
"""
_DIRECTION = {"OUTGOING": "AND payments.source_account_id = :account",
              "INCOMING": "AND payments.destination_account_id = :account"}
# Only payments whose other side belongs to the caller (a counterparty's account).
_VISIBLE = (
    "AND EXISTS (SELECT 1 FROM accounts o WHERE o.partner_id = :viewer"
    " AND o.id IN (payments.source_account_id, payments.destination_account_id))"
)
_QUALIFIED = ", ".join(f"payments.{column.key}" for column in COLUMNS)


async def account_page(
    session: ReadSession | WriteSession, account_id: uuid.UUID, *, limit: int,
    before: tuple[datetime, uuid.UUID] | None, viewer: uuid.UUID | None,
    where: PaymentFilter = NO_FILTER,
) -> list[PaymentRow]:
    """Up to ``limit`` payments touching the account, newest first, strictly after the cursor
    ``before`` (created_at, id), narrowed by ``where``. ``viewer`` restricts to payments
    whose accounts it owns."""
    before_at, before_id = before or (FAR_FUTURE, MAX_UUID)
    if where.created_to is not None:
        # created_at <= to is (created_at, id) < (to, MAX_UUID): one start position for the
        # index scan. As a separate condition the scan started at the newest row and read
        # down to it, checking each row.
        before_at, before_id = min((before_at, before_id), (where.created_to, MAX_UUID))
    filters, params = where.sql()
    visible = _VISIBLE if viewer else ""
    if where.by_metadata:
        metadata = "".join(f" AND m.{name} = :m_{name}" for name, value in (
            ("key", where.metadata_key), ("value", where.metadata_value)) if value is not None)
        params.update({f"m_{n}": v for n, v in (("key", where.metadata_key),
                                                ("value", where.metadata_value)) if v is not None})
        sql = _BY_METADATA.format(pcols=_QUALIFIED, metadata=metadata, visible=visible,
                                  direction=_DIRECTION.get(where.direction or "", ""),
                                  filters=filters)
    else:
        halves = [half for direction, half in (("OUTGOING", _OUTGOING), ("INCOMING", _INCOMING))
                  if where.direction in (None, direction)]
        union = " UNION ALL ".join(
            half.format(cols=_COLUMN_NAMES, visible=visible, filters=filters) for half in halves)
        sql = f"SELECT * FROM ({union}) page ORDER BY created_at DESC, id DESC LIMIT :limit"
    params.update({"account": account_id, "before_at": before_at, "before_id": before_id,
                   "limit": limit})
    if viewer:
        params["viewer"] = viewer
    rows = await session.execute(text(sql), params)
    return [PaymentRow(*row) for row in rows]
