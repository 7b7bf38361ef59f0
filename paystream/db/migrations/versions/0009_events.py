"""The events feed: one row per status event, written in the transaction that wrote the event.

``txid`` is the writing transaction's id (``pg_current_xact_id()``, the column's default).
The feed lists rows in (txid, id) order and only those with ``txid`` below the xmin of the
primary's current snapshot: every transaction below it has ended, so no row can later appear
before a cursor already handed out (docs/decisions.md, "The events feed"). Each event is
listed to the owners of both accounts of its payment, hence one index per side. ``payload``
is the status event as published (``events.messages.PaymentStatusEvent``), snapshots
included, so the feed renders without reading the payment. Rows older than 30 days are
pruned by the worker's outbox relay. No foreign keys: a row outlives nothing it names, and
an insert must not lock the payment's accounts (see worker/posting.py on KEY SHARE).
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE events (
    id                     bigserial PRIMARY KEY,
    txid                   xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at             timestamptz NOT NULL DEFAULT now(),
    type                   text NOT NULL,
    payment_id             uuid NOT NULL,
    refund_id              uuid,
    version                integer NOT NULL CHECK (version >= 1),
    source_account_id      uuid NOT NULL,
    destination_account_id uuid NOT NULL,
    source_partner_id      uuid NOT NULL,
    destination_partner_id uuid NOT NULL,
    payload                jsonb NOT NULL
);
CREATE INDEX events_source_partner_idx ON events (source_partner_id, txid, id);
CREATE INDEX events_destination_partner_idx ON events (destination_partner_id, txid, id);
"""

DOWNGRADE = """
DROP TABLE events;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
