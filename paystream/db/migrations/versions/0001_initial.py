"""Initial schema: partners, api keys, accounts, payments, the ledger and the outbox.

The constraints protect money where the database can check it: balances never negative,
amounts positive and bounded, one payment per (partner, idempotency key), ledger entries
append-only and summing to zero per payment at commit.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE partners (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    partner_id  uuid NOT NULL REFERENCES partners(id),
    key_hash    char(64) NOT NULL UNIQUE,
    prefix      text NOT NULL,
    scopes      text[] NOT NULL CHECK (scopes <@ ARRAY['payments:read', 'payments:write']),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE accounts (
    id             uuid PRIMARY KEY,
    partner_id     uuid NOT NULL REFERENCES partners(id),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance_minor  bigint NOT NULL CHECK (balance_minor >= 0),
    version        bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_partner_idx ON accounts (partner_id);

CREATE TABLE payments (
    id                      uuid PRIMARY KEY,
    partner_id              uuid NOT NULL REFERENCES partners(id),
    idempotency_key         text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash            char(64) NOT NULL,
    source_account_id       uuid NOT NULL REFERENCES accounts(id),
    destination_account_id  uuid NOT NULL REFERENCES accounts(id),
    amount_minor            bigint NOT NULL
                            CHECK (amount_minor > 0 AND amount_minor <= 1000000000000000),
    currency                char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reference               text CHECK (length(reference) <= 140),
    status                  text NOT NULL CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    failure_reason          text,
    version                 integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_partner_idempotency_key UNIQUE (partner_id, idempotency_key),
    CONSTRAINT payments_failure_reason_iff_failed
        CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL))
);
-- Newest-first pages per account, in either role; id breaks ties in created_at.
CREATE INDEX payments_source_page_idx ON payments (source_account_id, created_at DESC, id DESC);
CREATE INDEX payments_destination_page_idx
    ON payments (destination_account_id, created_at DESC, id DESC);

CREATE TABLE ledger_entries (
    id                   bigserial PRIMARY KEY,
    payment_id           uuid NOT NULL REFERENCES payments(id),
    account_id           uuid NOT NULL REFERENCES accounts(id),
    amount_minor         bigint NOT NULL CHECK (amount_minor <> 0),
    balance_after_minor  bigint NOT NULL CHECK (balance_after_minor >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_one_entry_per_account UNIQUE (payment_id, account_id)
);
CREATE INDEX ledger_entries_account_idx ON ledger_entries (account_id, id);

-- The ledger is append-only.
CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only' USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_entries_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

-- Checked at commit, once every entry of the transaction is in: each payment's entries sum to 0.
CREATE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE total numeric;
BEGIN
    SELECT coalesce(sum(amount_minor), 0) INTO total
      FROM ledger_entries WHERE payment_id = NEW.payment_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger entries of payment % sum to %, not 0', NEW.payment_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_entries_sum_to_zero
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_balanced();

CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
"""

DOWNGRADE = """
DROP TABLE outbox;
DROP TABLE ledger_entries;
DROP FUNCTION ledger_entries_balanced();
DROP FUNCTION ledger_entries_append_only();
DROP TABLE payments;
DROP TABLE accounts;
DROP TABLE api_keys;
DROP TABLE partners;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
