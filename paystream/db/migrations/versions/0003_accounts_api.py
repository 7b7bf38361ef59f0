"""Accounts created through the API: idempotent per (partner, idempotency key).

``createAccount`` stores the partner's idempotency key and a hash of the request with the
account; the unique constraint decides between concurrent duplicates, so exactly one account
exists per key. Accounts made by the CLI have no key (NULLs are distinct, so any number of
them). The index serves ``accounts(first, after)``: a partner's accounts, newest first.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE accounts ADD COLUMN idempotency_key text
    CHECK (length(idempotency_key) BETWEEN 1 AND 255);
ALTER TABLE accounts ADD COLUMN request_hash char(64);
ALTER TABLE accounts ADD CONSTRAINT accounts_partner_idempotency_key
    UNIQUE (partner_id, idempotency_key);
ALTER TABLE accounts ADD CONSTRAINT accounts_request_hash_with_key
    CHECK ((idempotency_key IS NULL) = (request_hash IS NULL));
CREATE INDEX accounts_partner_page_idx ON accounts (partner_id, created_at DESC, id DESC);
"""

DOWNGRADE = """
DROP INDEX accounts_partner_page_idx;
ALTER TABLE accounts DROP CONSTRAINT accounts_request_hash_with_key;
ALTER TABLE accounts DROP CONSTRAINT accounts_partner_idempotency_key;
ALTER TABLE accounts DROP COLUMN request_hash;
ALTER TABLE accounts DROP COLUMN idempotency_key;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
