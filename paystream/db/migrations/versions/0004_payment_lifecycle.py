"""The payment lifecycle: AUTHORIZED (a hold) and CANCELED join PENDING, SUCCEEDED and FAILED.

A CANCELED payment may carry a reason (AUTHORIZATION_EXPIRED when the system released it); a
FAILED one must; the others have none. ``paystream.domain.status`` holds the transitions.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PENDING', 'AUTHORIZED', 'SUCCEEDED', 'FAILED', 'CANCELED'));
ALTER TABLE payments DROP CONSTRAINT payments_failure_reason_iff_failed;
ALTER TABLE payments ADD CONSTRAINT payments_failure_reason_by_status
    CHECK (CASE status WHEN 'FAILED' THEN failure_reason IS NOT NULL
                       WHEN 'CANCELED' THEN true
                       ELSE failure_reason IS NULL END);
"""

DOWNGRADE = """
ALTER TABLE payments DROP CONSTRAINT payments_failure_reason_by_status;
ALTER TABLE payments ADD CONSTRAINT payments_failure_reason_iff_failed
    CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL));
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED'));
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
