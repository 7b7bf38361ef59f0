"""Posting a batch of payment requests to the ledger, in one transaction on the primary.

For each request still PENDING: lock both accounts (all accounts of the batch, in id order,
in one statement, so two workers never deadlock), apply the domain's posting rule, write the
status, two ledger entries and the balances, and an outbox row with the status event. A
request whose payment is no longer PENDING was handled before (redelivery) and changes
nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from ..cache.entities import status_event
from ..db import WriteSession
from ..db.accounts import AccountRow
from ..db.payments import PaymentRow
from ..domain.ledger import post_transfer
from ..domain.status import PaymentStatus
from ..events.messages import PaymentRequested, PaymentStatusEvent

# FOR NO KEY UPDATE, not FOR UPDATE: the posting changes no key, and FOR UPDATE would conflict
# with the KEY SHARE locks that every foreign-key check takes. The API's INSERT of a new
# payment KEY SHARE-locks its two accounts (in the order of its constraints, not by id), so a
# worker holding one of them FOR UPDATE and waiting for the other deadlocked with it under load.
_LOCK_PAYMENTS = text(
    "SELECT id, status, version, created_at FROM payments"
    " WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)
_LOCK_ACCOUNTS = text(
    "SELECT id, partner_id, currency, balance_minor, version, name, created_at, updated_at"
    " FROM accounts"
    " WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)
# Re-creates a payment from its message when the row is missing: the API withdrew it after a
# produce it believed failed, but the broker had in fact taken the message.
_INSERT_MISSING = text(
    "INSERT INTO payments (id, partner_id, idempotency_key, request_hash, source_account_id,"
    " destination_account_id, amount_minor, currency, reference, status, version, created_at,"
    " updated_at)"
    " SELECT :id, :partner_id, :idempotency_key, :request_hash, :source, :destination, :amount,"
    " :currency, :reference, 'PENDING', 1, CAST(:created_at AS timestamptz), now()"
    " WHERE EXISTS (SELECT 1 FROM accounts WHERE id = :source)"
    "   AND EXISTS (SELECT 1 FROM accounts WHERE id = :destination)"
    " ON CONFLICT DO NOTHING"
)
_UPDATE_PAYMENTS = text(
    "UPDATE payments p SET status = u.status, failure_reason = u.reason, version = p.version + 1,"
    " updated_at = :now"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:reasons AS text[]))"
    "   AS u(id, status, reason)"
    " WHERE p.id = u.id"
)
_UPDATE_ACCOUNTS = text(
    "UPDATE accounts a SET balance_minor = u.balance, version = u.version, updated_at = :now"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:balances AS bigint[]), CAST(:versions AS bigint[]))"
    "   AS u(id, balance, version)"
    " WHERE a.id = u.id"
)
_INSERT_ENTRIES = text(
    "INSERT INTO ledger_entries (payment_id, account_id, amount_minor, balance_after_minor)"
    " SELECT * FROM unnest(CAST(:payments AS uuid[]), CAST(:accounts AS uuid[]),"
    "   CAST(:amounts AS bigint[]), CAST(:balances AS bigint[]))"
)
_INSERT_OUTBOX = text(
    "INSERT INTO outbox (topic, key, payload)"
    " SELECT :topic, k, CAST(p AS jsonb) FROM unnest(CAST(:keys AS text[]), CAST(:payloads AS text[]))"
    "   AS u(k, p)"
    " RETURNING id"
)


@dataclass
class _Account:
    partner_id: uuid.UUID
    currency: str
    balance: int
    version: int
    name: str
    created_at: datetime
    updated_at: datetime
    touched: bool = False

    def row(self, account_id: uuid.UUID) -> AccountRow:
        return AccountRow(id=account_id, partner_id=self.partner_id, name=self.name,
                          currency=self.currency, balance_minor=self.balance,
                          version=self.version, created_at=self.created_at,
                          updated_at=self.updated_at)


@dataclass(frozen=True)
class BatchResult:
    """What one batch did: the events to publish and the outbox rows that carry them."""

    events: list[PaymentStatusEvent]
    outbox_ids: list[int]
    skipped: int  # redeliveries of payments already final, or requests with no payment
    payments: list[PaymentRow] = field(default_factory=list)  # as committed, for the cache
    accounts: list[AccountRow] = field(default_factory=list)


async def post_batch(
    session: WriteSession, requests: Sequence[PaymentRequested], *, status_topic: str
) -> BatchResult:
    """Post every still-PENDING request of the batch. The caller commits."""
    by_id: dict[uuid.UUID, PaymentRequested] = {}
    for request in requests:
        by_id.setdefault(request.payment_id, request)
    ids = list(by_id)
    locked = {row.id: row for row in await session.execute(_LOCK_PAYMENTS, {"ids": ids})}
    missing = [by_id[i] for i in ids if i not in locked]
    if missing:
        for request in missing:
            await session.execute(_INSERT_MISSING, _insert_params(request))
        again = await session.execute(_LOCK_PAYMENTS, {"ids": [r.payment_id for r in missing]})
        locked.update({row.id: row for row in again})
    pending = [by_id[i] for i in ids if i in locked and locked[i].status == "PENDING"]
    if not pending:
        return BatchResult(events=[], outbox_ids=[], skipped=len(requests))

    account_ids = sorted({a for r in pending for a in (r.source_account_id, r.destination_account_id)})
    accounts = {
        row.id: _Account(row.partner_id, row.currency, row.balance_minor, row.version, row.name,
                         row.created_at, row.updated_at)
        for row in await session.execute(_LOCK_ACCOUNTS, {"ids": account_ids})
    }
    now = datetime.now(UTC)
    entries: list[tuple[uuid.UUID, uuid.UUID, int, int]] = []
    events: list[PaymentStatusEvent] = []
    payments: list[PaymentRow] = []
    for request in pending:
        source = accounts[request.source_account_id]
        destination = accounts[request.destination_account_id]
        posting = post_transfer(
            source_id=request.source_account_id,
            source_balance=source.balance,
            source_currency=source.currency,
            destination_id=request.destination_account_id,
            destination_balance=destination.balance,
            destination_currency=destination.currency,
            amount_minor=request.amount_minor,
            currency=request.currency,
        )
        reason = posting.failure_reason.value if posting.failure_reason else None
        if posting.status is PaymentStatus.SUCCEEDED:
            source.balance, destination.balance = (
                posting.source_balance_after, posting.destination_balance_after,
            )
            for account in (source, destination):
                account.version += 1
                account.updated_at = now
                account.touched = True
            for entry in posting.entries:
                after = accounts[entry.account_id].balance
                entries.append((request.payment_id, entry.account_id, entry.amount_minor, after))
        payment = PaymentRow(
            id=request.payment_id, partner_id=request.partner_id,
            idempotency_key=request.idempotency_key, request_hash=request.request_hash,
            source_account_id=request.source_account_id,
            destination_account_id=request.destination_account_id,
            amount_minor=request.amount_minor, currency=request.currency,
            reference=request.reference, status=posting.status.value, failure_reason=reason,
            version=int(locked[request.payment_id].version) + 1,
            created_at=locked[request.payment_id].created_at, updated_at=now,
        )
        payments.append(payment)
        events.append(status_event(
            payment, source.row(request.source_account_id),
            destination.row(request.destination_account_id),
        ))

    await session.execute(
        _UPDATE_PAYMENTS,
        {"now": now, "ids": [p.id for p in payments], "statuses": [p.status for p in payments],
         "reasons": [p.failure_reason for p in payments]},
    )
    touched = [(i, a) for i, a in accounts.items() if a.touched]
    if touched:
        await session.execute(
            _UPDATE_ACCOUNTS,
            {"now": now, "ids": [i for i, _ in touched], "balances": [a.balance for _, a in touched],
             "versions": [a.version for _, a in touched]},
        )
    if entries:
        await session.execute(
            _INSERT_ENTRIES,
            {"payments": [e[0] for e in entries], "accounts": [e[1] for e in entries],
             "amounts": [e[2] for e in entries], "balances": [e[3] for e in entries]},
        )
    outbox = await session.execute(
        _INSERT_OUTBOX,
        {"topic": status_topic, "keys": [str(e.payment_id) for e in events],
         "payloads": [json.dumps(e.to_json()) for e in events]},
    )
    account_rows = [a.row(i) for i, a in touched]
    return BatchResult(
        events=events, outbox_ids=[row[0] for row in outbox], skipped=len(requests) - len(pending),
        payments=payments, accounts=account_rows,
    )


def _insert_params(request: PaymentRequested) -> dict[str, Any]:
    return {
        "id": request.payment_id, "partner_id": request.partner_id,
        "idempotency_key": request.idempotency_key, "request_hash": request.request_hash,
        "source": request.source_account_id, "destination": request.destination_account_id,
        "amount": request.amount_minor, "currency": request.currency,
        "reference": request.reference, "created_at": request.created_at,
    }
