"""Indexes for the relay's pruning: ``outbox (created_at)`` and ``events (created_at)``.

The relay prunes both tables every ``outbox.relay_interval_s`` (1 s), oldest first, in
batches. Without an index on the age it walked the primary key from the oldest row and
filtered on the age, so when nothing was old enough (every row younger than the retention,
the normal case between prunings) each pass read the whole table: found profiling the worker
drain (issue 16), where the two prunes took 40 ms and 23 ms of the primary per second with
20,000 payments in the tables, and it grows with the retention's worth of rows. With the
indexes a pass reads only rows past the age. Timestamps that grow with the inserts: each new
entry lands at the index's right edge. On a large database build them first with ``CREATE
INDEX CONCURRENTLY`` (the names match, so this migration then skips them).
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX IF NOT EXISTS outbox_created_idx ON outbox (created_at);
CREATE INDEX IF NOT EXISTS events_created_idx ON events (created_at);
"""

DOWNGRADE = """
DROP INDEX events_created_idx;
DROP INDEX outbox_created_idx;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
