"""Indexes for pruning webhook events and delivery attempts past their retention.

Until now ``webhook_events`` (one row per event per endpoint, with the body as sent) and
``webhook_deliveries`` (one row per attempt) were never deleted: at the bench's 400 events
a second, gigabytes a day. The relay now deletes finished events (DELIVERED or FAILED) and
attempts older than ``outbox.webhooks_retention_days`` (30), oldest first, in bounded batches
(``paystream.db.webhooks.prune_finished``). The indexes let each batch read only rows past the
age, and ``webhook_deliveries (webhook_event_id)`` serves the cascade from a deleted event
(without it, each deleted event scanned every attempt). On a large database build them first
with ``CREATE INDEX CONCURRENTLY`` (the names match, so this migration then skips them).
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX IF NOT EXISTS webhook_events_finished_idx ON webhook_events (finished_at)
    WHERE state <> 'PENDING';
CREATE INDEX IF NOT EXISTS webhook_deliveries_at_idx ON webhook_deliveries (at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_event_idx ON webhook_deliveries (webhook_event_id);
"""

DOWNGRADE = """
DROP INDEX webhook_deliveries_event_idx;
DROP INDEX webhook_deliveries_at_idx;
DROP INDEX webhook_events_finished_idx;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
