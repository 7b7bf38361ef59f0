"""A closed ledger: every balance is the sum of its entries.

Money enters and leaves through per-currency settlement accounts owned by the system partner,
the only accounts that may go negative (they mirror what partners hold). Entries belong to a
posting (``posting_id``) that sums to zero and has a kind; a payment's posting has the
payment's id. Opening balances written before this revision had no entries: each is booked
here as a FUNDING posting from its currency's settlement account, dated when the account was
created, so that ``balance == sum(entries)`` holds for every account. Payments still PENDING
get their request queued in the outbox, where requests are committed from now on.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The system partner's id; paystream.domain.ledger.SYSTEM_PARTNER_ID says the same.
SYSTEM = "00000000-0000-0000-0000-000000000001"

UPGRADE = f"""
INSERT INTO partners (id, name) VALUES ('{SYSTEM}', 'paystream:system');

ALTER TABLE accounts DROP CONSTRAINT accounts_balance_minor_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_partner_balance_not_negative
    CHECK (partner_id = '{SYSTEM}' OR balance_minor >= 0);
CREATE UNIQUE INDEX accounts_one_settlement_per_currency ON accounts (currency)
    WHERE partner_id = '{SYSTEM}';

ALTER TABLE ledger_entries ADD COLUMN posting_id uuid;
ALTER TABLE ledger_entries ADD COLUMN kind text;
ALTER TABLE ledger_entries ALTER COLUMN payment_id DROP NOT NULL;
ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_no_update_or_delete;
UPDATE ledger_entries SET posting_id = payment_id, kind = 'PAYMENT';
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_no_update_or_delete;
ALTER TABLE ledger_entries ALTER COLUMN posting_id SET NOT NULL;
ALTER TABLE ledger_entries ALTER COLUMN kind SET NOT NULL;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind
    CHECK (kind IN ('PAYMENT', 'REFUND', 'CAPTURE', 'HOLD', 'RELEASE', 'FUNDING'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_payment_kinds_name_a_payment
    CHECK ((kind = 'FUNDING') = (payment_id IS NULL));
-- Settlement accounts go negative, so their entries' running balances do too.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_balance_after_minor_check;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_one_entry_per_account;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_one_entry_per_account
    UNIQUE (posting_id, account_id);
CREATE INDEX ledger_entries_payment_idx ON ledger_entries (payment_id)
    WHERE payment_id IS NOT NULL;

CREATE OR REPLACE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE total numeric;
BEGIN
    SELECT coalesce(sum(amount_minor), 0) INTO total
      FROM ledger_entries WHERE posting_id = NEW.posting_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger entries of posting % sum to %, not 0', NEW.posting_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- One settlement account per currency in use.
INSERT INTO accounts (id, partner_id, name, currency, balance_minor, version)
SELECT gen_random_uuid(), '{SYSTEM}', 'Settlement ' || currency, currency, 0, 1
  FROM (SELECT DISTINCT currency FROM accounts) used;

-- Opening balances: what each account holds beyond its entries, booked as a funding.
CREATE TEMPORARY TABLE opening ON COMMIT DROP AS
SELECT gen_random_uuid() AS posting_id, a.id AS account_id, a.currency, a.created_at,
       a.balance_minor - coalesce(e.total, 0) AS amount
  FROM accounts a
  LEFT JOIN (SELECT account_id, sum(amount_minor) AS total FROM ledger_entries
              GROUP BY account_id) e ON e.account_id = a.id
 WHERE a.partner_id <> '{SYSTEM}' AND a.balance_minor - coalesce(e.total, 0) <> 0;

INSERT INTO ledger_entries (posting_id, kind, payment_id, account_id, amount_minor,
                            balance_after_minor, created_at)
SELECT o.posting_id, 'FUNDING', NULL::uuid, o.account_id, o.amount, o.amount, o.created_at
  FROM opening o
UNION ALL
SELECT o.posting_id, 'FUNDING', NULL::uuid, s.id, -o.amount,
       -sum(o.amount) OVER (PARTITION BY o.currency ORDER BY o.created_at, o.account_id),
       o.created_at
  FROM opening o JOIN accounts s ON s.partner_id = '{SYSTEM}' AND s.currency = o.currency;

-- Requests are now committed with their payment (the request outbox). A payment still
-- PENDING from before has its request queued again (the worker skips one it posted), so that
-- every PENDING payment has something queued for it. Topic: the default name.
INSERT INTO outbox (topic, key, payload)
SELECT 'payments.requested', p.source_account_id::text, jsonb_build_object(
           'type', 'payment.requested', 'schema', 1, 'payment_id', p.id,
           'partner_id', p.partner_id, 'idempotency_key', p.idempotency_key,
           'request_hash', p.request_hash, 'source_account_id', p.source_account_id,
           'destination_account_id', p.destination_account_id,
           'amount_minor', p.amount_minor, 'currency', p.currency, 'reference', p.reference,
           'created_at', p.created_at)
  FROM payments p WHERE p.status = 'PENDING' ORDER BY p.created_at, p.id;

UPDATE accounts s SET balance_minor = -f.total, version = s.version + f.postings
  FROM (SELECT currency, sum(amount) AS total, count(*) AS postings FROM opening
         GROUP BY currency) f
 WHERE s.partner_id = '{SYSTEM}' AND s.currency = f.currency;
"""

def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    # The funding entries are the only record of where opening balances came from, and the
    # ledger is append-only: there is no faithful way back.
    raise NotImplementedError("0002 (closed ledger) cannot be downgraded")
