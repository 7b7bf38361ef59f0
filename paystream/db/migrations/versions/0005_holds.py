"""Holds: ``capture: false`` authorizes a payment instead of moving money.

An authorization is a row in ``holds`` (one per payment, OPEN until it is CAPTURED or
RELEASED) and the source account's ``held_minor``, the sum of its open holds. The posted
balance does not change until a capture, which is a CAPTURE posting (two ledger entries of the
captured amount, the payment's id as posting id); a release moves no money. Available =
balance - held, never negative for a partner account (the CHECK below; ``ledger verify``
proves held_minor equals the open holds). A capture or cancel is recorded on the payment when
it is accepted (``requested_action``), so a second, different one is refused at once.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SYSTEM = "00000000-0000-0000-0000-000000000001"

UPGRADE = f"""
ALTER TABLE accounts ADD COLUMN held_minor bigint NOT NULL DEFAULT 0 CHECK (held_minor >= 0);
ALTER TABLE accounts ADD CONSTRAINT accounts_partner_available_not_negative
    CHECK (partner_id = '{SYSTEM}' OR balance_minor - held_minor >= 0);

ALTER TABLE payments ADD COLUMN capture boolean NOT NULL DEFAULT true;
ALTER TABLE payments ADD COLUMN authorization_ttl_s integer
    CHECK (authorization_ttl_s BETWEEN 1 AND 2592000);
ALTER TABLE payments ADD COLUMN authorization_expires_at timestamptz;
ALTER TABLE payments ADD COLUMN captured_minor bigint
    CHECK (captured_minor > 0 AND captured_minor <= amount_minor);
ALTER TABLE payments ADD COLUMN requested_action text
    CHECK (requested_action IN ('CAPTURE', 'CANCEL'));
ALTER TABLE payments ADD COLUMN requested_capture_minor bigint
    CHECK (requested_capture_minor > 0 AND requested_capture_minor <= amount_minor);
ALTER TABLE payments ADD CONSTRAINT payments_ttl_only_for_holds
    CHECK (capture = false OR authorization_ttl_s IS NULL);
-- The expiry sweep's index: only AUTHORIZED payments have an expiry.
CREATE INDEX payments_authorization_expiry_idx ON payments (authorization_expires_at)
    WHERE status = 'AUTHORIZED';

CREATE TABLE holds (
    payment_id      uuid PRIMARY KEY REFERENCES payments(id),
    account_id      uuid NOT NULL REFERENCES accounts(id),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    status          text NOT NULL CHECK (status IN ('OPEN', 'CAPTURED', 'RELEASED')),
    captured_minor  bigint CHECK (captured_minor > 0 AND captured_minor <= amount_minor),
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    CONSTRAINT holds_closed_when_not_open CHECK ((status = 'OPEN') = (closed_at IS NULL)),
    CONSTRAINT holds_captured_amount CHECK ((status = 'CAPTURED') = (captured_minor IS NOT NULL))
);
CREATE INDEX holds_open_account_idx ON holds (account_id) WHERE status = 'OPEN';
"""

DOWNGRADE = """
DROP TABLE holds;
DROP INDEX payments_authorization_expiry_idx;
ALTER TABLE payments DROP CONSTRAINT payments_ttl_only_for_holds;
ALTER TABLE payments DROP COLUMN requested_capture_minor;
ALTER TABLE payments DROP COLUMN requested_action;
ALTER TABLE payments DROP COLUMN captured_minor;
ALTER TABLE payments DROP COLUMN authorization_expires_at;
ALTER TABLE payments DROP COLUMN authorization_ttl_s;
ALTER TABLE payments DROP COLUMN capture;
ALTER TABLE accounts DROP CONSTRAINT accounts_partner_available_not_negative;
ALTER TABLE accounts DROP COLUMN held_minor;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
