"""Inquiry: statements, balances at a point in time, filtered payment history, metadata.

- ``ledger_entries.balance_after_minor`` has been written with every entry since 0001 (the
  account's posted balance after it, under the account's row lock). A statement lists entries
  by (created_at, id) and ``balanceAt`` reads the last one at or before a time, so that order
  must be the order the running balance was computed in: rows where it is not (entries dated
  earlier than entries posted before them, as 0002's opening balances are, or two workers'
  clocks apart) get the running sum in (created_at, id) order; on a sound ledger that changes
  nothing. From here on every writer dates an entry no earlier than the account's last change
  (``domain.ledger.posting_time``), and ``ledger verify`` checks the running sums.
- ``ledger_entries_statement_idx`` (account_id, created_at DESC, id DESC) INCLUDE the balance:
  a statement page is one index range and ``balanceAt`` one index-only probe.
- ``metadata_entries jsonb NOT NULL DEFAULT '[]'`` on payments, refunds and accounts (an
  array of {"key", "value"}; ``metadata`` itself is reserved by SQLAlchemy's declarative base).
- Indexes for the payment filters the docs call supported: status and reference per account
  role, in page order; ``payment_metadata``, one row per (payment, account, entry), whose
  indexes make a metadata page a range per account. Dates use the page indexes.

The indexes are built inside the migration's transaction, which blocks writes to the table
while each is built. On a large database build them first with ``CREATE INDEX CONCURRENTLY``
and the same definitions (docs/operations.md); ``IF NOT EXISTS`` then skips them here.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX IF NOT EXISTS ledger_entries_statement_idx
    ON ledger_entries (account_id, created_at DESC, id DESC) INCLUDE (balance_after_minor);

ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_no_update_or_delete;
UPDATE ledger_entries e SET balance_after_minor = r.running
  FROM (SELECT id, sum(amount_minor) OVER (PARTITION BY account_id ORDER BY created_at, id)
               AS running
          FROM ledger_entries) r
 WHERE e.id = r.id AND e.balance_after_minor <> r.running;
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_no_update_or_delete;

ALTER TABLE payments ADD COLUMN metadata_entries jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(metadata_entries) = 'array' AND jsonb_array_length(metadata_entries) <= 20);
ALTER TABLE refunds ADD COLUMN metadata_entries jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(metadata_entries) = 'array' AND jsonb_array_length(metadata_entries) <= 20);
ALTER TABLE accounts ADD COLUMN metadata_entries jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(metadata_entries) = 'array' AND jsonb_array_length(metadata_entries) <= 20);

CREATE INDEX IF NOT EXISTS payments_source_status_page_idx
    ON payments (source_account_id, status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS payments_destination_status_page_idx
    ON payments (destination_account_id, status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS payments_source_reference_idx
    ON payments (source_account_id, reference, created_at DESC, id DESC)
    WHERE reference IS NOT NULL;
CREATE INDEX IF NOT EXISTS payments_destination_reference_idx
    ON payments (destination_account_id, reference, created_at DESC, id DESC)
    WHERE reference IS NOT NULL;

-- The metadata filter's index: one row per (payment, account of either role, entry), so a
-- filtered page is a range in the page's order whatever the matches' density or role.
-- Written with the payment (metadata never changes), checked by ledger verify.
CREATE TABLE payment_metadata (
    account_id  uuid NOT NULL REFERENCES accounts(id),
    payment_id  uuid NOT NULL REFERENCES payments(id),
    key         text NOT NULL,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (account_id, key, value, created_at, payment_id)
);
CREATE INDEX payment_metadata_key_idx ON payment_metadata (account_id, key, created_at, payment_id);
CREATE INDEX payment_metadata_value_idx
    ON payment_metadata (account_id, value, created_at, payment_id);
"""

DOWNGRADE = """
DROP TABLE payment_metadata;
DROP INDEX payments_destination_reference_idx;
DROP INDEX payments_source_reference_idx;
DROP INDEX payments_destination_status_page_idx;
DROP INDEX payments_source_status_page_idx;
ALTER TABLE accounts DROP COLUMN metadata_entries;
ALTER TABLE refunds DROP COLUMN metadata_entries;
ALTER TABLE payments DROP COLUMN metadata_entries;
DROP INDEX ledger_entries_statement_idx;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    # Running balances recomputed by the upgrade stay as they are: they are the correct ones.
    execute_script(DOWNGRADE)
