"""The ledger's own statements: settlement accounts, fundings, and the checks of
``paystream ledger verify``. The worker's payment postings are in ``worker/posting.py``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import text

from ..domain.entities import AccountRow
from ..domain.errors import BadUserInput, NotFound
from ..domain.ledger import SYSTEM_PARTNER_ID, EntryKind, post_funding, posting_time
from .engine import ReadSession, WriteSession

_ACCOUNT_COLUMNS = ("id, partner_id, name, currency, balance_minor, version, created_at, updated_at,"
                    " held_minor, metadata_entries")

_ENSURE_SETTLEMENT = text(
    "INSERT INTO accounts (id, partner_id, name, currency, balance_minor, version)"
    " VALUES (:id, :system, 'Settlement ' || :currency, :currency, 0, 1)"
    f" ON CONFLICT (currency) WHERE partner_id = '{SYSTEM_PARTNER_ID}' DO NOTHING"
)
_SETTLEMENT_ID = text(
    "SELECT id FROM accounts WHERE partner_id = :system AND currency = :currency"
)
_CURRENCY_OF = text("SELECT currency, partner_id FROM accounts WHERE id = :id")
# Both accounts in id order, like the worker's locks, so a funding never deadlocks a posting.
_LOCK_TWO = text(
    f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id IN (:a, :b) ORDER BY id FOR NO KEY UPDATE"
)
_SET_BALANCE = text(
    "UPDATE accounts SET balance_minor = :balance, version = :version, updated_at = :now"
    " WHERE id = :id"
)
# All of a posting's entries in one statement: the balance check runs per statement
# (migration 0013), so a posting inserted leg by leg would be refused at its first leg.
_INSERT_ENTRIES = text(
    "INSERT INTO ledger_entries (posting_id, kind, payment_id, account_id, amount_minor,"
    " balance_after_minor, created_at)"
    " SELECT CAST(:posting AS uuid), CAST(:kind AS text), CAST(:payment AS uuid), a, m, b,"
    "   CAST(:now AS timestamptz)"
    " FROM unnest(CAST(:accounts AS uuid[]), CAST(:amounts AS bigint[]),"
    "   CAST(:afters AS bigint[])) AS u(a, m, b)"
)


@dataclass(frozen=True, slots=True)
class FundingPosting:
    """A funding as committed: its posting id and both accounts after it."""

    posting_id: uuid.UUID
    amount_minor: int
    settlement: AccountRow
    account: AccountRow


async def insert_entries(session: WriteSession, posting_id: uuid.UUID, kind: EntryKind,
                         payment_id: uuid.UUID | None,
                         entries: Sequence[tuple[uuid.UUID, int, int]], now: datetime) -> None:
    """One posting's entries, each ``(account_id, amount_minor, balance_after_minor)``, in
    one statement (the database refuses a statement whose postings do not sum to zero)."""
    await session.execute(_INSERT_ENTRIES, {
        "posting": posting_id, "kind": kind.value, "payment": payment_id, "now": now,
        "accounts": [e[0] for e in entries], "amounts": [e[1] for e in entries],
        "afters": [e[2] for e in entries]})


async def settlement_account(session: WriteSession, currency: str) -> uuid.UUID:
    """The settlement account of ``currency``, created on first use."""
    params = {"id": uuid.uuid4(), "system": SYSTEM_PARTNER_ID, "currency": currency}
    await session.execute(_ENSURE_SETTLEMENT, params)
    return uuid.UUID(str((await session.execute(_SETTLEMENT_ID, params)).scalar_one()))


async def fund(session: WriteSession, account_id: uuid.UUID, amount_minor: int) -> FundingPosting:
    """Post ``amount_minor`` from the settlement account of the account's currency to the
    account: both balances, both versions and two FUNDING entries. The caller commits."""
    found = (await session.execute(_CURRENCY_OF, {"id": account_id})).first()
    if found is None:
        raise NotFound("no such account")
    currency, owner = found
    if owner == SYSTEM_PARTNER_ID:
        raise BadUserInput("a settlement account cannot be funded", field="account")
    settlement_id = await settlement_account(session, currency)
    rows = {
        row[0]: AccountRow(*row)
        for row in await session.execute(_LOCK_TWO, {"a": settlement_id, "b": account_id})
    }
    settlement, account = rows[settlement_id], rows[account_id]
    funding = post_funding(
        settlement_id=settlement_id, settlement_balance=settlement.balance_minor,
        account_id=account_id, account_balance=account.balance_minor, amount_minor=amount_minor,
    )
    now = posting_time(datetime.now(UTC), (settlement.updated_at, account.updated_at))
    posting_id = uuid.uuid4()
    after = {settlement_id: funding.settlement_balance_after, account_id: funding.account_balance_after}
    updated = {}
    for account_row in (settlement, account):
        row = AccountRow(
            id=account_row.id, partner_id=account_row.partner_id, name=account_row.name,
            currency=account_row.currency, balance_minor=after[account_row.id],
            version=account_row.version + 1, created_at=account_row.created_at, updated_at=now,
            held_minor=account_row.held_minor, metadata_entries=account_row.metadata_entries,
        )
        await session.execute(_SET_BALANCE, {"id": row.id, "balance": row.balance_minor,
                                             "version": row.version, "now": now})
        updated[row.id] = row
    await insert_entries(session, posting_id, EntryKind.FUNDING, None,
                         [(e.account_id, e.amount_minor, after[e.account_id])
                          for e in funding.entries], now)
    return FundingPosting(posting_id, amount_minor, updated[settlement_id], updated[account_id])


# --- verification -----------------------------------------------------------------------

# Each check names what is wrong; an empty result is a pass. Every one reads the whole ledger
# (an operator's command, not a request path).
_CHECKS: dict[str, str] = {
    "balance differs from the sum of its entries": """
        SELECT a.id::text || ': balance ' || a.balance_minor || ', entries '
               || coalesce(e.total, 0)
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(amount_minor) AS total FROM ledger_entries
                      GROUP BY account_id) e ON e.account_id = a.id
         WHERE a.balance_minor <> coalesce(e.total, 0)""",
    # Statements and balanceAt read balance_after_minor in (created_at, id) order.
    "entry's balance after differs from the running sum": """
        SELECT id::text || ' (account ' || account_id::text || '): balance after '
               || balance_after_minor || ', running sum ' || running
          FROM (SELECT id, account_id, balance_after_minor,
                       sum(amount_minor) OVER (PARTITION BY account_id
                                               ORDER BY created_at, id) AS running
                  FROM ledger_entries) r
         WHERE balance_after_minor <> running""",
    "posting does not sum to zero": """
        SELECT posting_id::text || ': sums to ' || sum(amount_minor)
          FROM ledger_entries GROUP BY posting_id HAVING sum(amount_minor) <> 0""",
    "partner account is negative": """
        SELECT id::text || ': balance ' || balance_minor FROM accounts
         WHERE partner_id <> :system AND balance_minor < 0""",
    # A transfer posts the amount (PAYMENT entries); a capture the captured amount (CAPTURE).
    "SUCCEEDED payment lacks exactly its two entries": """
        SELECT p.id::text || ': ' || count(e.id) || ' entries' FROM payments p
          LEFT JOIN ledger_entries e ON e.payment_id = p.id AND e.posting_id = p.id
                                    AND e.kind IN ('PAYMENT', 'CAPTURE')
         WHERE p.status = 'SUCCEEDED'
         GROUP BY p.id, p.amount_minor, p.captured_minor, p.source_account_id,
                  p.destination_account_id
        HAVING count(e.id) <> 2
            OR count(*) FILTER (WHERE e.account_id = p.source_account_id
                    AND e.amount_minor = -coalesce(p.captured_minor, p.amount_minor)
                    AND e.kind = CASE WHEN p.captured_minor IS NULL THEN 'PAYMENT'
                                      ELSE 'CAPTURE' END) <> 1
            OR count(*) FILTER (WHERE e.account_id = p.destination_account_id
                    AND e.amount_minor = coalesce(p.captured_minor, p.amount_minor)) <> 1""",
    "FAILED or CANCELED payment has entries": """
        SELECT p.id::text || ' (' || p.status || '): ' || count(*) || ' entries' FROM payments p
          JOIN ledger_entries e ON e.payment_id = p.id
         WHERE p.status IN ('FAILED', 'CANCELED') GROUP BY p.id, p.status""",
    "held differs from the open holds": """
        SELECT a.id::text || ': held ' || a.held_minor || ', open holds ' || coalesce(h.total, 0)
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(amount_minor) AS total FROM holds
                      WHERE status = 'OPEN' GROUP BY account_id) h ON h.account_id = a.id
         WHERE a.held_minor <> coalesce(h.total, 0)""",
    "available balance is negative": """
        SELECT id::text || ': balance ' || balance_minor || ', held ' || held_minor
          FROM accounts WHERE partner_id <> :system AND balance_minor - held_minor < 0""",
    "hold disagrees with its payment": """
        SELECT p.id::text || ' (' || p.status || '): hold ' || coalesce(h.status, 'none')
          FROM payments p LEFT JOIN holds h ON h.payment_id = p.id
         WHERE (p.status = 'AUTHORIZED') <> (h.status IS NOT DISTINCT FROM 'OPEN')
            OR (h.payment_id IS NOT NULL AND (h.account_id <> p.source_account_id
                OR h.amount_minor <> p.amount_minor OR p.capture))
            OR (h.status IS NOT DISTINCT FROM 'CAPTURED') <> (p.captured_minor IS NOT NULL)
            OR (h.status = 'CAPTURED' AND h.captured_minor <> p.captured_minor)""",
    "refunded amount differs from the SUCCEEDED refunds": """
        SELECT p.id::text || ': refunded ' || p.refunded_minor || ', refunds '
               || coalesce(r.total, 0)
          FROM payments p
          LEFT JOIN (SELECT payment_id, sum(amount_minor) AS total FROM refunds
                      WHERE status = 'SUCCEEDED' GROUP BY payment_id) r ON r.payment_id = p.id
         WHERE p.refunded_minor <> coalesce(r.total, 0)""",
    "refunds claim more than the payment moved": """
        SELECT p.id::text || ': moved ' || coalesce(p.captured_minor, p.amount_minor)
               || ', refunds claim ' || sum(r.amount_minor)
          FROM payments p JOIN refunds r ON r.payment_id = p.id
         WHERE r.status IN ('PENDING', 'SUCCEEDED')
         GROUP BY p.id, p.status, p.captured_minor, p.amount_minor
        HAVING p.status <> 'SUCCEEDED'
            OR sum(r.amount_minor) > coalesce(p.captured_minor, p.amount_minor)""",
    "SUCCEEDED refund lacks exactly its two entries": """
        SELECT r.id::text || ': ' || count(e.id) || ' entries' FROM refunds r
          JOIN payments p ON p.id = r.payment_id
          LEFT JOIN ledger_entries e ON e.posting_id = r.id
         WHERE r.status = 'SUCCEEDED'
         GROUP BY r.id, r.amount_minor, p.id, p.source_account_id, p.destination_account_id
        HAVING count(e.id) <> 2
            OR count(*) FILTER (WHERE e.kind = 'REFUND' AND e.payment_id = p.id
                    AND e.account_id = p.destination_account_id
                    AND e.amount_minor = -r.amount_minor) <> 1
            OR count(*) FILTER (WHERE e.kind = 'REFUND' AND e.payment_id = p.id
                    AND e.account_id = p.source_account_id
                    AND e.amount_minor = r.amount_minor) <> 1""",
    "PENDING or FAILED refund has entries": """
        SELECT r.id::text || ' (' || r.status || '): ' || count(*) || ' entries' FROM refunds r
          JOIN ledger_entries e ON e.posting_id = r.id
         WHERE r.status <> 'SUCCEEDED' GROUP BY r.id, r.status""",
    # The metadata filter reads payment_metadata: each entry once per account of the payment.
    "payment metadata index disagrees with the payment": """
        WITH m AS (
            SELECT m.payment_id, count(*) AS n,
                   bool_and(m.account_id IN (p.source_account_id, p.destination_account_id)
                            AND m.created_at = p.created_at
                            AND p.metadata_entries @> jsonb_build_array(
                                jsonb_build_object('key', m.key, 'value', m.value))) AS ok
              FROM payment_metadata m JOIN payments p ON p.id = m.payment_id
             GROUP BY m.payment_id)
        SELECT p.id::text || ': ' || coalesce(m.n, 0) || ' index rows for '
               || jsonb_array_length(p.metadata_entries) || ' entries'
          FROM payments p LEFT JOIN m ON m.payment_id = p.id
         WHERE coalesce(m.n, 0) <> 2 * jsonb_array_length(p.metadata_entries)
            OR NOT coalesce(m.ok, true)""",
    "PENDING refund has nothing queued": """
        SELECT r.id::text FROM refunds r
         WHERE r.status = 'PENDING' AND NOT EXISTS (
               SELECT 1 FROM outbox o WHERE o.topic = :requested
                  AND o.payload->>'refund_id' = r.id::text)""",
    "PENDING payment has nothing queued": """
        SELECT p.id::text FROM payments p
         WHERE p.status = 'PENDING' AND NOT EXISTS (
               SELECT 1 FROM outbox o WHERE o.topic = :requested
                  AND o.payload->>'payment_id' = p.id::text)""",
}

_COUNTS = text("""
    SELECT (SELECT count(*) FROM accounts WHERE partner_id <> :system),
           (SELECT count(*) FROM accounts WHERE partner_id = :system),
           (SELECT count(*) FROM ledger_entries),
           (SELECT count(DISTINCT posting_id) FROM ledger_entries)
""")
_STATUSES = text("SELECT status, count(*) FROM payments GROUP BY status ORDER BY status")


@dataclass
class LedgerReport:
    """What ``verify`` found: counts, and each violation by check (empty when sound)."""

    accounts: int = 0
    settlement_accounts: int = 0
    entries: int = 0
    postings: int = 0
    payments: dict[str, int] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(default_factory=dict)

    @property
    def sound(self) -> bool:
        return not any(self.violations.values())

    def summary(self) -> str:
        statuses = ", ".join(f"{n} {s}" for s, n in self.payments.items()) or "no payments"
        verdict = "sound" if self.sound else (
            f"{sum(len(v) for v in self.violations.values())} violations")
        return (f"ledger {verdict}: {self.accounts} accounts, {self.settlement_accounts}"
                f" settlement accounts, {self.postings} postings, {self.entries} entries;"
                f" payments: {statuses}")


async def verify(session: ReadSession | WriteSession, *, requested_topic: str,
                 max_listed: int = 100) -> LedgerReport:
    """Run every check in one snapshot (the caller's transaction should be REPEATABLE READ so
    the checks agree with each other). Lists at most ``max_listed`` violations per check."""
    params = {"system": SYSTEM_PARTNER_ID, "requested": requested_topic}
    report = LedgerReport()
    counts = (await session.execute(_COUNTS, params)).one()
    report.accounts, report.settlement_accounts, report.entries, report.postings = map(int, counts)
    report.payments = {status: int(n) for status, n in await session.execute(_STATUSES)}
    for name, sql in _CHECKS.items():
        found = await session.execute(text(f"{sql} LIMIT {int(max_listed)}"), params)
        report.violations[name] = [str(row[0]) for row in found]
    return report
