"""The worker's status events are written once: in the events feed, with one outbox row per
posting that names the feed rows it must publish (issue 16, the drain).

Until now each status event was stored twice in the posting's transaction (its feed row and
an outbox row with the same JSON, both parsed as jsonb) and its outbox row written a second
time when marked sent: a third of the drain's statement time. A row with ``event_ids`` has no
``payload``: the relay publishes each named event from the feed, keyed by its payment, with
the trace context at the same place of ``trace`` (a JSON array for such a row). Rows with a
``payload`` (the API's requests, ``refund.pending``) are as before. Nullable columns without
a default and a CHECK that every existing row meets: nothing is rewritten.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE outbox ADD COLUMN event_ids bigint[];
ALTER TABLE outbox ADD CONSTRAINT outbox_payload_or_events
    CHECK ((payload IS NULL) <> (event_ids IS NULL));
"""

# Down: the unsent events of such rows become rows of their own again (their JSON as the
# feed holds it, without the cursor), so a downgrade loses no message.
DOWNGRADE = """
INSERT INTO outbox (topic, key, payload, trace, created_at)
SELECT o.topic, e.payment_id::text, e.payload, o.trace -> (u.ord::int - 1), o.created_at
  FROM outbox o CROSS JOIN LATERAL unnest(o.event_ids) WITH ORDINALITY AS u(event_id, ord)
  JOIN events e ON e.id = u.event_id
 WHERE o.event_ids IS NOT NULL AND o.sent_at IS NULL
 ORDER BY o.id, u.ord;
DELETE FROM outbox WHERE event_ids IS NOT NULL;
ALTER TABLE outbox DROP CONSTRAINT outbox_payload_or_events;
ALTER TABLE outbox DROP COLUMN event_ids;
ALTER TABLE outbox ALTER COLUMN payload SET NOT NULL;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
