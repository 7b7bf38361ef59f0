"""Posting a batch of payment requests to the ledger, in one transaction on the primary.

The locked payment row, not the message, is the source of truth: the amount, currency and
accounts posted are the row's. A message that disagrees with its row (or names no payment)
changes nothing and is handed back as rejected, for the dead-letter topic.

For each request still PENDING: lock both accounts (all accounts of the batch, in id order,
in one statement, so two workers never deadlock), apply the domain's posting rule, write the
status, two ledger entries (one PAYMENT posting, whose id is the payment's) and the balances,
and a row of the events feed (``db.events``) with the status event; the batch's events are
published through one outbox row that names their feed rows. A request with ``capture:
false`` places a hold instead (status AUTHORIZED, a ``holds`` row, the source's
``held_minor``; no entries). A request whose payment is no longer PENDING was handled before
(redelivery) and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from ..db import WriteSession
from ..db.events import record_encoded
from ..db.outbox import add_events
from ..db.payments import COLUMNS as PAYMENT_COLUMNS
from ..domain.entities import AccountRow, PaymentRow
from ..domain.ledger import post_authorization, post_transfer, posting_time
from ..domain.lifecycle import DEFAULT_AUTHORIZATION_TTL_S
from ..domain.metadata import Metadata, metadata_from_json
from ..domain.status import PaymentStatus, check_transition
from ..events.messages import (
    PaymentCommand,
    PaymentRequested,
    PaymentStatusEvent,
    RefundRequested,
)
from ..tracing import Carrier

# FOR NO KEY UPDATE, not FOR UPDATE: the posting changes no key, and FOR UPDATE would conflict
# with the KEY SHARE locks that every foreign-key check takes. The API's INSERT of a new
# payment KEY SHARE-locks its two accounts (in the order of its constraints, not by id), so a
# worker holding one of them FOR UPDATE and waiting for the other deadlocked with it under load.
_LOCK_PAYMENTS = text(
    f"SELECT {', '.join(c.key for c in PAYMENT_COLUMNS)} FROM payments"
    " WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)
_LOCK_ACCOUNTS = text(
    "SELECT id, partner_id, currency, balance_minor, version, name, created_at, updated_at,"
    " held_minor, metadata_entries FROM accounts"
    " WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)
_UPDATE_PAYMENTS = text(
    "UPDATE payments p SET status = u.status, failure_reason = u.reason, version = p.version + 1,"
    " updated_at = :now, authorization_expires_at = u.expires"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:reasons AS text[]),"
    "   CAST(:expiries AS timestamptz[])) AS u(id, status, reason, expires)"
    " WHERE p.id = u.id"
)
_UPDATE_ACCOUNTS = text(
    "UPDATE accounts a SET balance_minor = u.balance, version = u.version, updated_at = :now,"
    " held_minor = u.held"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:balances AS bigint[]), CAST(:versions AS bigint[]),"
    "   CAST(:helds AS bigint[])) AS u(id, balance, version, held)"
    " WHERE a.id = u.id"
)
_INSERT_ENTRIES = text(
    "INSERT INTO ledger_entries (posting_id, kind, payment_id, account_id, amount_minor,"
    " balance_after_minor, created_at)"
    " SELECT p, 'PAYMENT', p, a, m, b, :now FROM unnest(CAST(:payments AS uuid[]),"
    "   CAST(:accounts AS uuid[]), CAST(:amounts AS bigint[]), CAST(:balances AS bigint[]))"
    "   AS u(p, a, m, b)"
)
_INSERT_HOLDS = text(
    "INSERT INTO holds (payment_id, account_id, amount_minor, status, expires_at, created_at)"
    " SELECT p, a, m, 'OPEN', e, :now FROM unnest(CAST(:payments AS uuid[]),"
    "   CAST(:accounts AS uuid[]), CAST(:amounts AS bigint[]), CAST(:expiries AS timestamptz[]))"
    "   AS u(p, a, m, e)"
)

Traces = Mapping[uuid.UUID, Carrier | None]
"""The trace context each payment's status event is sent on with (``paystream.tracing``):
the worker's span processing the payment's request; a payment not in it has none."""


@dataclass
class _Account:
    partner_id: uuid.UUID
    currency: str
    balance: int
    version: int
    name: str
    created_at: datetime
    updated_at: datetime
    held: int = 0
    metadata_entries: Metadata = ()
    touched: bool = False

    def row(self, account_id: uuid.UUID) -> AccountRow:
        return AccountRow(id=account_id, partner_id=self.partner_id, name=self.name,
                          currency=self.currency, balance_minor=self.balance,
                          version=self.version, created_at=self.created_at,
                          updated_at=self.updated_at, held_minor=self.held,
                          metadata_entries=self.metadata_entries)

    def change(self, now: datetime) -> None:
        """A posting (or hold) changed this account: a new version for the cache."""
        self.version += 1
        self.updated_at = now
        self.touched = True


@dataclass(frozen=True)
class BatchResult:
    """What one batch did: the events to publish and the outbox rows that carry them."""

    events: list[PaymentStatusEvent]
    outbox_ids: list[int]
    skipped: int  # redeliveries of payments already final
    payloads: list[bytes] = field(default_factory=list)  # each event's JSON, as its outbox row
    payments: list[PaymentRow] = field(default_factory=list)  # as committed, for the cache
    accounts: list[AccountRow] = field(default_factory=list)
    # Requests that changed nothing because they disagree with their row (or have none),
    # each with the reason: for the dead-letter topic.
    rejected: list[tuple[PaymentRequested | PaymentCommand | RefundRequested, str]] = field(
        default_factory=list)


async def write_status_events(session: WriteSession, events: list[PaymentStatusEvent], *,
                              status_topic: str, traces: Traces | None = None
                              ) -> tuple[list[PaymentStatusEvent], list[int], list[bytes]]:
    """The events' rows of the feed, then one outbox row naming them (with each payment's
    trace context from ``traces``), in the caller's transaction; returns the events as
    published (with their cursors and ``trace``), the outbox row's id and their JSON (for
    the producer: each event is encoded once, and stored once, in the feed)."""
    if not events:
        return [], [], []
    recorded = await record_encoded(session, events)
    events = [r.event if not traces else r.traced(traces.get(r.written.payment_id))
              for r in recorded]
    outbox_id = await add_events(session, status_topic, [r.id for r in recorded],
                                 [e.trace for e in events])
    return events, [outbox_id], [r.raw for r in recorded]


def disagreement(request: PaymentRequested, row: PaymentRow | None) -> str | None:
    """Why a request does not match its payment row, or None when it does."""
    if row is None:
        return "no such payment"
    # The terms the partner asked for; the state (status, version, times) is the row's own.
    for name in _TERMS:
        if getattr(request.payment, name) != getattr(row, name):
            return f"message disagrees with its payment row: {name}"
    return None


_TERMS = ("partner_id", "source_account_id", "destination_account_id", "amount_minor",
          "currency", "idempotency_key")


async def post_batch(
    session: WriteSession, requests: Sequence[PaymentRequested], *, status_topic: str,
    traces: Traces | None = None,
) -> BatchResult:
    """Post every still-PENDING request of the batch. The caller commits."""
    ids = list(dict.fromkeys(request.payment_id for request in requests))
    locked = {
        row[0]: PaymentRow(*row)
        for row in await session.execute(_LOCK_PAYMENTS, {"ids": ids})
    }
    # Each message on its own merits: a tampered copy must not hide the valid request for the
    # same payment (or the other way round). Redeliveries of one payment are posted once.
    rejected: list[tuple[PaymentRequested | PaymentCommand | RefundRequested, str]] = []
    chosen: dict[uuid.UUID, PaymentRow] = {}
    for request in requests:
        reason = disagreement(request, locked.get(request.payment_id))
        if reason is not None:
            rejected.append((request, reason))
        elif locked[request.payment_id].status == "PENDING":
            chosen.setdefault(request.payment_id, locked[request.payment_id])
    pending = list(chosen.values())
    skipped = len(requests) - len(pending) - len(rejected)
    if not pending:
        return BatchResult(events=[], outbox_ids=[], skipped=skipped, rejected=rejected)

    account_ids = sorted({a for p in pending for a in (p.source_account_id, p.destination_account_id)})
    accounts = {
        row.id: _Account(row.partner_id, row.currency, row.balance_minor, row.version, row.name,
                         row.created_at, row.updated_at, row.held_minor,
                         metadata_from_json(row.metadata_entries))
        for row in await session.execute(_LOCK_ACCOUNTS, {"ids": account_ids})
    }
    now = posting_time(datetime.now(UTC), (a.updated_at for a in accounts.values()))
    entries: list[tuple[uuid.UUID, uuid.UUID, int, int]] = []
    holds: list[tuple[uuid.UUID, uuid.UUID, int, datetime]] = []
    events: list[PaymentStatusEvent] = []
    payments: list[PaymentRow] = []
    for row in pending:
        source = accounts[row.source_account_id]
        destination = accounts[row.destination_account_id]
        decide = post_transfer if row.capture else post_authorization
        posting = decide(
            source_id=row.source_account_id,
            source_balance=source.balance,
            source_currency=source.currency,
            source_held=source.held,
            destination_id=row.destination_account_id,
            destination_balance=destination.balance,
            destination_currency=destination.currency,
            amount_minor=row.amount_minor,
            currency=row.currency,
        )
        reason = posting.failure_reason.value if posting.failure_reason else None
        expires_at: datetime | None = None
        if posting.status is PaymentStatus.SUCCEEDED:
            source.balance, destination.balance = (
                posting.source_balance_after, posting.destination_balance_after,
            )
            for account in (source, destination):
                account.change(now)
            for entry in posting.entries:
                after = accounts[entry.account_id].balance
                entries.append((row.id, entry.account_id, entry.amount_minor, after))
        elif posting.status is PaymentStatus.AUTHORIZED:
            # The lifetime runs from the hold, not from acceptance.
            ttl = row.authorization_ttl_s or DEFAULT_AUTHORIZATION_TTL_S
            expires_at = now + timedelta(seconds=ttl)
            source.held += row.amount_minor
            source.change(now)
            holds.append((row.id, row.source_account_id, row.amount_minor, expires_at))
        check_transition(PaymentStatus(row.status), posting.status)
        payment = replace(row, status=posting.status.value, failure_reason=reason,
                          version=row.version + 1, updated_at=now,
                          authorization_expires_at=expires_at)
        payments.append(payment)
        events.append(PaymentStatusEvent.of(
            payment, source.row(row.source_account_id),
            destination.row(row.destination_account_id),
        ))

    await session.execute(
        _UPDATE_PAYMENTS,
        {"now": now, "ids": [p.id for p in payments], "statuses": [p.status for p in payments],
         "reasons": [p.failure_reason for p in payments],
         "expiries": [p.authorization_expires_at for p in payments]},
    )
    touched = [(i, a) for i, a in accounts.items() if a.touched]
    if touched:
        await session.execute(
            _UPDATE_ACCOUNTS,
            {"now": now, "ids": [i for i, _ in touched], "balances": [a.balance for _, a in touched],
             "versions": [a.version for _, a in touched], "helds": [a.held for _, a in touched]},
        )
    if entries:
        await session.execute(
            _INSERT_ENTRIES,
            {"now": now, "payments": [e[0] for e in entries], "accounts": [e[1] for e in entries],
             "amounts": [e[2] for e in entries], "balances": [e[3] for e in entries]},
        )
    if holds:
        await session.execute(
            _INSERT_HOLDS,
            {"now": now, "payments": [h[0] for h in holds], "accounts": [h[1] for h in holds],
             "amounts": [h[2] for h in holds], "expiries": [h[3] for h in holds]},
        )
    events, outbox_ids, payloads = await write_status_events(
        session, events, status_topic=status_topic, traces=traces)
    account_rows = [a.row(i) for i, a in touched]
    return BatchResult(
        events=events, outbox_ids=outbox_ids, payloads=payloads, skipped=skipped,
        payments=payments, accounts=account_rows, rejected=rejected,
    )
