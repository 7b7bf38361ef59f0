"""Webhooks: partners' endpoints, the durable per-endpoint delivery schedule, the attempt log.

``webhook_endpoints.secret_ciphertext`` is the signing secret encrypted with the settings'
key (Fernet): the sender needs the plaintext to sign, so it cannot be hashed like an API key.
A rotation keeps the previous secret (also encrypted) until ``previous_secret_expires_at``.

``webhook_events`` is the schedule: one row per (endpoint, event), written by the sender's
consumer in the transaction before it commits its Kafka offsets, so a status event is either
scheduled or consumed again. ``state`` PENDING rows are due at ``next_attempt_at``;
DELIVERED and FAILED (given up after the retry window) are final. ``webhook_deliveries`` logs
every attempt.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE webhook_endpoints (
    id                         uuid PRIMARY KEY,
    partner_id                 uuid NOT NULL REFERENCES partners(id),
    url                        text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events                     text[] NOT NULL CHECK (cardinality(events) >= 1),
    status                     text NOT NULL DEFAULT 'ENABLED'
                               CHECK (status IN ('ENABLED', 'DISABLED')),
    secret_ciphertext          bytea NOT NULL,
    previous_secret_ciphertext bytea,
    previous_secret_expires_at timestamptz,
    -- Since when every attempt to this endpoint has failed (NULL after a success).
    failing_since              timestamptz,
    disabled_at                timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_previous_secret_expires
        CHECK ((previous_secret_ciphertext IS NULL) = (previous_secret_expires_at IS NULL))
);
CREATE INDEX webhook_endpoints_partner_idx ON webhook_endpoints (partner_id, created_at);

CREATE TABLE webhook_events (
    id               bigserial PRIMARY KEY,
    event_id         uuid NOT NULL,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    payment_id       uuid NOT NULL,
    version          integer NOT NULL CHECK (version >= 1),
    type             text NOT NULL,
    body             text NOT NULL,
    state            text NOT NULL DEFAULT 'PENDING'
                     CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- The retry window runs from here (a resend starts it again).
    scheduled_at     timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT webhook_events_endpoint_event UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_events_due_idx ON webhook_events (next_attempt_at) WHERE state = 'PENDING';
CREATE INDEX webhook_events_order_idx ON webhook_events (endpoint_id, payment_id, version);
CREATE INDEX webhook_events_event_idx ON webhook_events (event_id);

CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    webhook_event_id bigint NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id         uuid NOT NULL,
    attempt          integer NOT NULL CHECK (attempt >= 1),
    response_status  integer,
    error            text CHECK (length(error) <= 500),
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id);
"""

DOWNGRADE = """
DROP TABLE webhook_deliveries;
DROP TABLE webhook_events;
DROP TABLE webhook_endpoints;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
