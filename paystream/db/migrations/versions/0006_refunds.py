"""Refunds: a SUCCEEDED payment's captured amount paid back, whole or in parts.

A refund is its own row (PENDING, then SUCCEEDED or FAILED), idempotent per (partner,
idempotency key). The worker posts a SUCCEEDED one as a REFUND posting of its own (the
refund's id as posting id, the payment's id on both entries: destination -amount, source
+amount) and adds it to the payment's ``refunded_minor``, which never exceeds what the
payment moved (CHECK below; the API and the worker check it too, under the payment's lock).
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE payments ADD COLUMN refunded_minor bigint NOT NULL DEFAULT 0
    CHECK (refunded_minor >= 0);
ALTER TABLE payments ADD CONSTRAINT payments_refunds_within_captured
    CHECK (refunded_minor = 0 OR (status = 'SUCCEEDED'
           AND refunded_minor <= coalesce(captured_minor, amount_minor)));

CREATE TABLE refunds (
    id               uuid PRIMARY KEY,
    partner_id       uuid NOT NULL REFERENCES partners(id),
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     char(64) NOT NULL,
    payment_id       uuid NOT NULL REFERENCES payments(id),
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    reason           text CHECK (length(reason) <= 140),
    status           text NOT NULL CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    failure_reason   text,
    version          integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_partner_idempotency_key UNIQUE (partner_id, idempotency_key),
    CONSTRAINT refunds_failure_reason_iff_failed
        CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL))
);
CREATE INDEX refunds_payment_idx ON refunds (payment_id, created_at, id);
"""

DOWNGRADE = """
DROP TABLE refunds;
ALTER TABLE payments DROP CONSTRAINT payments_refunds_within_captured;
ALTER TABLE payments DROP COLUMN refunded_minor;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
