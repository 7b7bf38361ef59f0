"""The W3C trace context of messages waiting in the database (issue 18, tracing).

``outbox.trace`` is the context of the operation or posting that wrote the row (the API's
request, the worker's processing of a request); the relay sends it on in the message's
Kafka headers, so a trace survives a message's wait in the outbox (a broker outage, a crash
before the produce). ``webhook_events.trace`` is the context of the status event a delivery
comes from, continued by each attempt. Both ``{"traceparent": ..., "tracestate": ...}``,
NULL when tracing is off (docs/operations.md, "Tracing"). Nullable columns without a default:
adding them rewrites nothing.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE outbox ADD COLUMN trace jsonb;
ALTER TABLE webhook_events ADD COLUMN trace jsonb;
"""

DOWNGRADE = """
ALTER TABLE webhook_events DROP COLUMN trace;
ALTER TABLE outbox DROP COLUMN trace;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
