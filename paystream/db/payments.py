"""Payments: the idempotent insert of the write path and batched reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import any_, bindparam, delete, select, text
from sqlalchemy.dialects.postgresql import insert

from ..domain.metadata import Metadata, metadata_from_json, metadata_json
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
    metadata_entries: Metadata = ()  # the partner's (key, value) pairs, in its order

    def __post_init__(self) -> None:
        # Rows come with the stored JSON form (a list of objects, or its text).
        if not isinstance(self.metadata_entries, tuple):
            object.__setattr__(self, "metadata_entries", metadata_from_json(self.metadata_entries))

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
    Payment.metadata_entries,
)


_COLUMN_NAMES = ", ".join(column.key for column in COLUMNS)

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
    values["metadata_entries"] = metadata_json(row.metadata_entries)
    created = (await session.execute(_INSERT_PENDING, values)).first()
    if created is not None:
        if row.metadata_entries:
            await _index_metadata(session, row)
        return PaymentRow(*created), True  # type: ignore[call-arg]  # a Row unpacks to the fields
    existing = (
        await session.execute(
            select(*COLUMNS).where(
                Payment.partner_id == row.partner_id, Payment.idempotency_key == row.idempotency_key
            )
        )
    ).one()
    return PaymentRow(*existing), False  # type: ignore[call-arg]  # a Row of the dataclass's columns, in order


_INSERT_METADATA = text(
    "INSERT INTO payment_metadata (account_id, payment_id, key, value, created_at)"
    " SELECT a, :payment, k, v, :created_at FROM unnest(CAST(:accounts AS uuid[]),"
    "   CAST(:keys AS text[]), CAST(:values AS text[])) AS u(a, k, v)"
)


async def _index_metadata(session: WriteSession, row: PaymentRow) -> None:
    """The payment's rows of ``payment_metadata``: each entry for each of its two accounts."""
    pairs = [(account, key, value) for account in (row.source_account_id,
                                                   row.destination_account_id)
             for key, value in row.metadata_entries]
    await session.execute(_INSERT_METADATA, {
        "payment": row.id, "created_at": row.created_at, "accounts": [p[0] for p in pairs],
        "keys": [p[1] for p in pairs], "values": [p[2] for p in pairs]})


# The bulk insert: one statement for any number of payments, in the order given (the
# caller sorts by idempotency key, so two bulk requests sharing keys wait on each other's
# unique-index entries in one order and cannot deadlock).
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
    f" RETURNING {_COLUMN_NAMES}"
)
_EXISTING_BY_KEYS = text(
    f"SELECT {_COLUMN_NAMES} FROM payments"
    " WHERE partner_id = :partner AND idempotency_key = ANY(CAST(:keys AS text[]))"
)
_INSERT_METADATA_MANY = text(
    "INSERT INTO payment_metadata (account_id, payment_id, key, value, created_at)"
    " SELECT a, p, k, v, c FROM unnest(CAST(:accounts AS uuid[]), CAST(:payments AS uuid[]),"
    "   CAST(:keys AS text[]), CAST(:values AS text[]), CAST(:created AS timestamptz[]))"
    "   AS u(a, p, k, v, c)"
)


async def insert_pending_many(session: WriteSession, partner_id: uuid.UUID,
                              rows: Sequence[PaymentRow]) -> dict[str, tuple[PaymentRow, bool]]:
    """Insert PENDING payments of one partner, each unless its idempotency key exists
    already: one INSERT for all of them, one SELECT for the keys that existed, one INSERT for
    their metadata index rows. Returns, by idempotency key, the stored row and whether this
    call created it. Keys must be distinct; rows are inserted in the order given."""
    if not rows:
        return {}
    assert all(r.partner_id == partner_id for r in rows)
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
    stored: dict[str, tuple[PaymentRow, bool]] = {}
    for values in created:
        row = PaymentRow(*values)
        stored[row.idempotency_key] = (row, True)
    missing = [r.idempotency_key for r in rows if r.idempotency_key not in stored]
    if missing:
        for values in await session.execute(_EXISTING_BY_KEYS, {"partner": partner_id,
                                                                "keys": missing}):
            row = PaymentRow(*values)
            stored[row.idempotency_key] = (row, False)
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
    return {row[0]: PaymentRow(*row) for row in rows}  # type: ignore[call-arg]  # as above


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
