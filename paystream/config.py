"""Settings: one object, built at start-up, validated then.

Every value comes from the environment with the prefix ``PAYSTREAM_``; nested models use a
double underscore, for example ``PAYSTREAM_DB__PRIMARY_URL`` or ``PAYSTREAM_KAFKA__FETCH_MAX_WAIT_MS``.
The tracing group also honours the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
``OTEL_SERVICE_NAME`` when its own variables are unset. Nothing else in the package reads
``os.environ``.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Dev defaults, named here so production code can refuse them without importing the dev runner.
DEV_DIR = ".paystream"
"""Where ``paystream dev`` keeps its servers' data, its state and the demo key."""
DEMO_PARTNER = "demo"
"""The partner ``paystream dev`` seeds; its key is kept in clear under DEV_DIR."""


class DatabaseSettings(BaseModel):
    """PostgreSQL: the primary takes every write; replicas serve reads."""

    primary_url: str = ""
    replica_urls: list[str] = Field(default_factory=list)
    pool_size: int = 10
    max_overflow: int = 10
    # Longest wait for a pooled connection; past it the request answers UNAVAILABLE (the
    # process is overloaded) instead of hanging.
    pool_timeout_s: float = 5.0
    # A replica that does not answer within this many seconds is skipped for the request.
    connect_timeout_s: float = 2.0
    statement_timeout_ms: int = 10_000
    # PostgreSQL's plan_cache_mode for every connection. "force_custom_plan": each execution of
    # a prepared statement is planned for its parameters and the tables as they are now. With
    # "auto", a statement's generic plan, chosen while a table was small (a new deployment, a
    # bench), stays cached on its connection: the worker's lock of a batch's payments by id
    # kept a sequential scan of a table grown to 65,000 rows, 78 ms a call instead of 2 ms
    # (docs/benchmarks.md, 2026-12-04). Planning each call costs a fraction of a millisecond.
    plan_cache_mode: Literal["auto", "force_custom_plan", "force_generic_plan"] = (
        "force_custom_plan")


class RedisSettings(BaseModel):
    """Redis: cache, idempotency hints, rate limits, persisted queries."""

    url: str = ""
    socket_timeout_s: float = 0.5
    # After a failure, skip Redis for this long before trying again (circuit breaker).
    retry_after_failure_s: float = 1.0
    payment_ttl_s: int = 24 * 3600
    account_ttl_s: int = 3600
    # Account pages (the ids a page lists) and their generations. Every change to an account's
    # list replaces its generation; the TTL only bounds a page whose change could not be told
    # (a process that died holding a bump it could not send during an outage).
    page_ttl_s: int = 300


class KafkaSettings(BaseModel):
    """The Kafka-protocol broker and the topics of the write path."""

    bootstrap_servers: str = ""
    requested_topic: str = "payments.requested"
    status_topic: str = "payments.status"
    dlq_topic: str = "payments.requested.dlq"
    worker_group: str = "paystream-worker"
    # Partitions of payments.requested and payments.status: the most workers that share the
    # load. Requests are keyed by source account, so one account's payments stay in order.
    partitions: int = 8
    replication_factor: int = 1
    # Off for the dev broker (tansu refuses InitProducerId); on for Apache Kafka.
    enable_idempotence: bool = False
    # The dev broker answers a fetch only when this runs out; keep it short for status consumers.
    fetch_max_wait_ms: int = 10
    produce_timeout_s: float = 3.0
    # How long createPayment waits for the broker's acknowledgement before UNAVAILABLE.
    request_timeout_ms: int = 2000
    # Bytes per partition in one produce request (aiokafka's max_batch_size; its default is
    # 16 KiB). aiokafka keeps one request in flight per broker, with one batch per partition,
    # and a send that finds its partition's batch full waits for that batch to be taken. With
    # 16 KiB, the 2,000 messages of a bulk request (about 900 bytes each; the 1,000 requests of
    # one source account on one partition) went out some 50 round trips in turn, the API's
    # publisher fell behind its acceptances and its full queue left whole requests to the
    # relay (docs/benchmarks.md, 2026-12-04). 1 MB holds them in one request; it stays under the
    # broker's largest batch (Kafka's message.max.bytes, 1,048,588 by default).
    producer_batch_bytes: int = Field(default=1_000_000, ge=16_384, le=1_000_000)
    worker_batch_size: int = 500
    # Posted batches waiting for the worker's publisher (worker.pipeline): the poll loop
    # posts the next while these are produced. Rows produced are marked sent by the next
    # posting's transaction, or by the publisher after this long without one.
    worker_publish_depth: int = 4
    worker_mark_after_ms: int = 20
    # The worker group's liveness: a member that sends no heartbeat for session_timeout_ms
    # (SIGKILLed, say) loses its partitions, and the others post them from the last
    # committed offsets. aiokafka's defaults; heartbeats must come several times a session.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    # How long a worker may take between polls before it is considered stuck and leaves the
    # group (a batch retried through an outage counts): then its partitions move on.
    max_poll_interval_ms: int = 300_000

    @model_validator(mode="after")
    def _heartbeats_within_session(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("kafka.heartbeat_interval_ms must be at most a third of "
                             "kafka.session_timeout_ms")
        return self


class OutboxSettings(BaseModel):
    """The outbox: messages committed with their change, produced after the commit."""

    # Sent rows are deleted after this many days (requests of payments still PENDING are
    # kept); the relay prunes in batches of prune_batch rows.
    retention_days: float = 7.0
    prune_batch: int = 1_000
    # The events feed (``events``, resumable ``accountActivity``) keeps this many days; the
    # same relay prunes older rows, prune_batch at a time.
    events_retention_days: float = 30.0
    # Webhook events that finished (DELIVERED or FAILED) and delivery attempts are kept this
    # many days (what webhookDeliveries lists, and what enabling a DISABLED endpoint can
    # revive); the same relay prunes older rows, prune_batch at a time. PENDING ones stay.
    webhooks_retention_days: float = Field(default=30.0, gt=0)
    # The relay publishes rows left unsent for this long (their producer had its chance),
    # relay_batch at a time, looking again every relay_interval_s.
    relay_min_age_s: float = 5.0
    relay_batch: int = 500
    relay_interval_s: float = 1.0


class HoldSettings(BaseModel):
    """Authorizations (``capture: false``) and their system release."""

    # The worker releases authorizations past their expiry (CANCELED, AUTHORIZATION_EXPIRED),
    # looking every expiry_interval_s, expiry_batch at a time.
    expiry_interval_s: float = 1.0
    expiry_batch: int = 200


class LimitsSettings(BaseModel):
    """Request limits enforced by the gateway (docs/decisions.md explains each default)."""

    # `first` above this is capped, not refused.
    max_page_size: int = 100
    # Field levels: `{ payment { id } }` is 2.
    max_query_depth: int = 10
    max_aliases: int = 30
    max_tokens: int = 2000
    # Estimated fields resolved: each field counts once per object it may be resolved on.
    max_query_cost: int = 10_000
    max_body_bytes: int = 256 * 1024
    # Operations in one JSON-array (batched) request; 1 refuses batching.
    max_batch_operations: int = 10
    # Inputs of one createPayments (bulk) call; more is QUERY_TOO_COMPLEX, limit "batch".
    # Each input takes a mutation rate-limit token, so a batch above mutation_burst is
    # refused (RATE_LIMITED) whatever this says; the default burst admits one full batch.
    max_bulk_payments: int = Field(default=1000, ge=1)
    parser_cache_size: int = 1024
    validation_cache_size: int = 1024
    # Token buckets per API key (per client address without a valid key): `burst` requests
    # at once, refilled at `per_s` a second; queries and mutations have separate buckets.
    query_rate_per_s: float = 100.0
    query_burst: int = 200
    mutation_rate_per_s: float = 50.0
    # 1,000: one full createPayments batch at once (then 50 a second); admission control
    # (api.max_in_flight) still bounds how many single mutations run at once.
    mutation_burst: int = 1000
    # Subscribe (graphql-ws: start) messages per API key, over all its sockets: each one
    # reads the primary and registers a watch, so a client looping subscribe/complete costs.
    subscribe_rate_per_s: float = 20.0
    subscribe_burst: int = 200
    # The limiter's own Redis connections per process (a pool that makes a burst wait for a
    # connection rather than fail); while Redis is unavailable each process limits on its own.
    redis_connections: int = Field(default=16, ge=1)


class ApiSettings(BaseModel):
    """The HTTP/websocket server."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # Seconds uvicorn lets running requests finish after SIGTERM.
    graceful_shutdown_s: int = 10
    # Browser origins (scheme://host[:port]) allowed by CORS and the websocket Origin check.
    cors_origins: list[str] = Field(default_factory=list)
    # Automatic persisted queries: how long a registered query is kept in Redis.
    persisted_query_ttl_s: int = 7 * 24 * 3600
    # Admission control per process: GraphQL HTTP requests executing at once (0: no limit),
    # and how long one waits for a slot before 503 UNAVAILABLE (it has not run; retry).
    max_in_flight: int = 128
    queue_timeout_s: float = 5.0
    # Longest time a client may take to send a request body (whole, not per chunk); past it
    # the answer is 408 and the connection is closed. Bodies are read before admission
    # control, so a slow sender never holds an execution slot.
    body_read_timeout_s: float = 5.0
    # API keys resolved on the primary are kept in the process (at most this many; 0: every
    # request asks the primary). A revocation is pushed to every API process on its commit
    # (PostgreSQL LISTEN/NOTIFY); kept keys are trusted only while that connection is up,
    # which is checked every key_listener_ping_s, so a revoked key is refused everywhere
    # within about twice that. Each kept key is asked again after key_cache_ttl_s anyway.
    key_cache_size: int = 10_000
    key_cache_ttl_s: float = 300.0
    key_listener_ping_s: float = 0.4
    # createPayment calls that arrive while accept_commits commits are under way wait for the
    # next commit, which takes all of them (at most accept_batch): concurrent mutations share
    # one transaction. An idle process commits a lone payment at once.
    accept_commits: int = Field(default=2, ge=1)
    accept_batch: int = Field(default=500, ge=1)
    # The outbox rows the publisher produced are marked sent by the next acceptance's
    # transaction, or by the publisher after this long without one.
    publisher_mark_after_ms: int = Field(default=20, ge=0)


class SubscriptionSettings(BaseModel):
    """Websocket subscriptions (graphql-transport-ws and graphql-ws)."""

    # Events queued for one subscriber before it is judged too slow and disconnected. The
    # queue holds references to events shared by all subscribers, so it is cheap; it must
    # exceed the burst one consumed batch can bring for one hot account.
    max_queued_events: int = 1000
    # Events the status consumer hands out at once; a subscriber that keeps up can still see
    # a whole batch arrive together, so the queue must hold several.
    stream_batch_size: int = 200
    max_per_connection: int = 100
    # Bytes sent to a client but not yet taken by its socket; past this it is disconnected.
    max_buffered_bytes: int = 1 << 20
    connection_init_timeout_s: float = 10.0
    # A socket's API key is looked up again this often (one index probe on the primary), so
    # a revoked key's sockets are closed (4403) within this long.
    key_recheck_s: float = 1.0
    # A socket is closed (4000, "reconnect") after this long; clients reconnect and get the
    # current state first. Bounds what a socket's settings and credentials can outlive.
    max_connection_lifetime_s: float = 3600.0
    # permessage-deflate for clients that offer it. Off: compressing is per socket (each has
    # its own context), so one update to 10,000 sockets is 10,000 compressions, most of the
    # fan-out's CPU once its payload is encoded once (docs/benchmarks.md), and each context
    # holds tens of KB; update frames are small JSON.
    per_message_deflate: bool = False


    @model_validator(mode="after")
    def _queue_holds_bursts(self) -> SubscriptionSettings:
        if self.max_queued_events < 2 * self.stream_batch_size:
            raise ValueError("subscriptions.max_queued_events must be at least twice "
                             "subscriptions.stream_batch_size")
        return self


class MetricsSettings(BaseModel):
    """Prometheus metrics of the roles without an HTTP server of their own (the worker, the
    webhook sender)."""

    # The worker serves /metrics on this port; 0 (the default) serves nothing and samples
    # nothing. The API serves /metrics on its own port.
    worker_port: int = 0
    worker_host: str = "127.0.0.1"
    # The same for a webhook sender (`paystream webhooks`): its attempts, and the schedule's
    # backlog sampled every sample_interval_s.
    webhooks_port: int = 0
    webhooks_host: str = "127.0.0.1"
    # How often the worker samples the backlogs (outbox rows unsent, dead letters waiting,
    # its group's lag): one indexed query and three small broker requests each time; and a
    # sender its own (the schedule, endpoints, its group's lag on payments.status).
    sample_interval_s: float = 15.0


class WebhookSettings(BaseModel):
    """Webhooks to partner back ends: the sender role (``paystream webhooks``) and the API's
    endpoint registration."""

    # Fernet key (urlsafe base64 of 32 bytes) encrypting the endpoints' signing secrets at
    # rest; ``old_encryption_keys`` still decrypt (key rotation). `paystream dev` and the
    # tests generate one into the stack's directory; elsewhere it must be set.
    encryption_key: SecretStr = SecretStr("")
    old_encryption_keys: list[SecretStr] = Field(default_factory=list)
    # The sender's consumer group on payments.status.
    group: str = "paystream-webhooks"
    # One POST, whole (connect, send, answer), then it counts as failed. Redirects are not followed
    # and at most max_response_bytes of the answer are read.
    request_timeout_s: float = 10.0
    max_response_bytes: int = 1024
    # A claimed delivery is leased for this long: a sender that dies mid-attempt leaves it
    # due again then (must exceed an attempt: resolve_timeout_s + request_timeout_s).
    lease_s: float = 30.0
    # Retries: retry_base_s doubling per failed attempt up to retry_max_s, with jitter (the
    # first retry within retry_base_s); an event is given up retry_window_s after it was
    # scheduled, and an endpoint whose every attempt failed for disable_after_s is DISABLED.
    retry_base_s: float = 10.0
    retry_max_s: float = 3600.0
    retry_window_s: float = 3 * 24 * 3600.0
    disable_after_s: float = 3 * 24 * 3600.0
    # A rotated secret keeps signing (a second v1) for this long.
    previous_secret_ttl_s: float = 24 * 3600.0
    # The delivery loop: due rows claimed at most claim_batch at a time, looking again every
    # poll_interval_s when idle; deliveries in flight per process, and per endpoint (so one
    # slow endpoint cannot take every slot).
    claim_batch: int = 100
    poll_interval_s: float = 0.5
    max_in_flight: int = 64
    max_in_flight_per_endpoint: int = 8
    max_endpoints_per_partner: int = 20
    # DNS resolution of an endpoint's host (at registration and before each attempt).
    resolve_timeout_s: float = 5.0

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> WebhookSettings:
        if self.lease_s <= self.request_timeout_s + self.resolve_timeout_s:
            raise ValueError("webhooks.lease_s must exceed webhooks.request_timeout_s plus "
                             "webhooks.resolve_timeout_s (an attempt's longest time)")
        return self


class OtelSettings(BaseModel):
    """OpenTelemetry tracing (``paystream/tracing.py``; docs/operations.md, "Tracing"). Off
    unless an endpoint is set: then nothing is set up and no message carries a trace."""

    # Base URL of an OTLP/HTTP receiver (a collector): spans go to <endpoint>/v1/traces.
    # Without PAYSTREAM_OTEL__ENDPOINT the standard OTEL_EXPORTER_OTLP_ENDPOINT is used.
    endpoint: str = Field(
        default_factory=lambda: os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    # The spans' service.name; empty: paystream-<role> (paystream-api, paystream-worker,
    # paystream-webhooks, paystream-dev). Falls back to the standard OTEL_SERVICE_NAME.
    service_name: str = Field(default_factory=lambda: os.environ.get("OTEL_SERVICE_NAME", ""))
    # The share of traces started here that are recorded; a trace that arrives with a message
    # keeps the decision made where it started.
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    @field_validator("endpoint")
    @classmethod
    def _an_http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"otel.endpoint: {value!r} is not an http(s) URL like "
                             "http://otel-collector:4318")
        return value


class Settings(BaseSettings):
    """All of paystream's settings.

    ``dev`` turns on GraphiQL and introspection; it is set only by ``paystream dev`` and the
    tests. Outside dev mode the settings refuse to start without the server URLs.
    """

    model_config = SettingsConfigDict(
        env_prefix="PAYSTREAM_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    dev: bool = False
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    holds: HoldSettings = Field(default_factory=HoldSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    subscriptions: SubscriptionSettings = Field(default_factory=SubscriptionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    otel: OtelSettings = Field(default_factory=OtelSettings)

    @model_validator(mode="after")
    def _require_servers(self) -> Settings:
        missing = [
            name
            for name, value in (
                ("PAYSTREAM_DB__PRIMARY_URL", self.db.primary_url),
                ("PAYSTREAM_REDIS__URL", self.redis.url),
                ("PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS", self.kafka.bootstrap_servers),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                "missing settings: " + ", ".join(missing)
                + " (run `paystream dev` for a local stack, or set them)"
            )
        return self

    @model_validator(mode="after")
    def _refuse_dev_only_outside_dev(self) -> Settings:
        for origin in self.api.cors_origins:
            if origin == "*" and not self.dev:
                raise ValueError(
                    "PAYSTREAM_API__CORS_ORIGINS may not contain '*' outside dev mode: "
                    "list the frontend origins"
                )
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"PAYSTREAM_API__CORS_ORIGINS: {origin!r} is not an origin "
                                 "like https://app.example.com")
        return self


def environment_for(settings: Settings, base: dict[str, str]) -> dict[str, str]:
    """``base`` (a process environment) with the PAYSTREAM_* variables that reproduce
    ``settings``'s servers and dev mode: for child processes (worker, api) in tests and benches."""
    import json

    env = {k: v for k, v in base.items() if not k.startswith("PAYSTREAM_")}
    env.update(
        PAYSTREAM_DEV="true" if settings.dev else "false",
        PAYSTREAM_DB__PRIMARY_URL=settings.db.primary_url,
        PAYSTREAM_DB__REPLICA_URLS=json.dumps(settings.db.replica_urls),
        PAYSTREAM_REDIS__URL=settings.redis.url,
        PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
    )
    key = settings.webhooks.encryption_key.get_secret_value()
    if key:
        env["PAYSTREAM_WEBHOOKS__ENCRYPTION_KEY"] = key
    if settings.otel.endpoint:
        env["PAYSTREAM_OTEL__ENDPOINT"] = settings.otel.endpoint
    return env
