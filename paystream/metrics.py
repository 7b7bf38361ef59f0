"""Prometheus series of one process, served by the gateway at ``/metrics`` (by the worker on
``PAYSTREAM_METRICS__WORKER_PORT`` and by a webhook sender on ``PAYSTREAM_METRICS__WEBHOOKS_PORT``
when set).

Any role may record into them (the gateway, the resolvers' DataLoaders, subscription and worker
code): this module imports nothing of the project. Values are per process; with
``paystream api --workers N`` each scrape reads one worker (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = [
    "CONSUMER_LAG",
    "CONTENT_TYPE_LATEST",
    "DATALOADER_BATCH_SIZE",
    "DLQ_MESSAGES",
    "ERRORS",
    "OPEN_SUBSCRIPTIONS",
    "OUTBOX_COUNT_CAP",
    "OUTBOX_OLDEST_UNSENT_SECONDS",
    "OUTBOX_UNSENT",
    "PAYMENTS_ACCEPTED",
    "PERSISTED_QUERIES",
    "PUBLISHER_LEFT_TO_RELAY",
    "RATE_LIMITED",
    "READY",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_SECONDS",
    "SQL_STATEMENTS",
    "SUBSCRIPTION_PAYLOADS",
    "SUBSCRIPTION_UPDATES",
    "WEBHOOK_ATTEMPTS",
    "WEBHOOK_ATTEMPT_SECONDS",
    "WEBHOOK_COUNT_CAP",
    "WEBHOOK_DELIVERY_LAG_SECONDS",
    "WEBHOOK_ENDPOINTS",
    "WEBHOOK_IN_FLIGHT",
    "WEBHOOK_OLDEST_DUE_SECONDS",
    "WEBHOOK_SCHEDULE",
    "WEBHOOK_SCHEDULED",
    "record_readiness",
    "render",
    "serve_metrics",
    "subscription_closed",
    "subscription_opened",
    "watch_cache",
]

REGISTRY = CollectorRegistry(auto_describe=True)

# Counting a huge outbox backlog exactly would cost a long scan at every sample; past this
# the count says "at least" (the age still tells how bad it is).
OUTBOX_COUNT_CAP = 100_000

REQUESTS = Counter(
    "paystream_graphql_requests", "GraphQL operations served over HTTP.",
    ["operation", "type"], registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "paystream_graphql_request_seconds", "Time to execute a GraphQL operation.",
    ["operation", "type"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
API_KEY_LOOKUPS = Counter(
    "paystream_api_key_lookups",
    "API keys resolved, by source: the process's cache of keys, or the database.", ["source"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "paystream_graphql_errors", "GraphQL errors returned, by extensions.code.",
    ["code"], registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "paystream_rate_limited",
    "Operations refused by a rate limit (bucket: query, mutation) or, bucket 'admission', "
    "after waiting for a free execution slot.", ["bucket"],
    registry=REGISTRY,
)
PERSISTED_QUERIES = Counter(
    "paystream_persisted_queries", "Automatic persisted query lookups by outcome.", ["outcome"],
    registry=REGISTRY,
)
DATALOADER_BATCH_SIZE = Histogram(
    "paystream_dataloader_batch_size", "Keys per DataLoader batch.", ["loader"],
    registry=REGISTRY, buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
CONSUMER_LAG = Gauge(
    "paystream_consumer_lag", "Messages behind the end of the partition, per consumer.",
    ["group", "topic", "partition"], registry=REGISTRY,
)
SQL_STATEMENTS = Counter(
    "paystream_sql_statements", "SQL statements sent, by server role (primary or replica).",
    ["role"], registry=REGISTRY,
)
OPEN_SUBSCRIPTIONS = Gauge(
    "paystream_open_subscriptions", "GraphQL subscriptions open in this process.",
    registry=REGISTRY,
)

PAYMENTS_ACCEPTED = Counter(
    "paystream_payments_accepted",
    "createPayment answers, and createPayments inputs, that carried a payment (committed with "
    "its request, or found by an idempotent retry).", registry=REGISTRY,
)
READY = Gauge(
    "paystream_ready", "1 while a readiness check of /readyz passes, by check; refreshed on "
    "every /readyz and every scrape.", ["check"], registry=REGISTRY,
)
OUTBOX_UNSENT = Gauge(
    "paystream_outbox_unsent",
    "Outbox rows (accepted requests, status events) not yet produced (counted up to "
    f"{OUTBOX_COUNT_CAP}).",
    registry=REGISTRY,
)
OUTBOX_OLDEST_UNSENT_SECONDS = Gauge(
    "paystream_outbox_oldest_unsent_seconds",
    "Age of the oldest outbox row not yet published (0 when none).", registry=REGISTRY,
)
DLQ_MESSAGES = Gauge(
    "paystream_dlq_messages",
    "Dead letters not yet examined by `paystream dlq redrive` (its consumer group's lag).",
    ["topic"], registry=REGISTRY,
)

PUBLISHER_LEFT_TO_RELAY = Counter(
    "paystream_publisher_left_to_relay",
    "Messages this API process committed but did not produce itself: its publisher's queue was "
    "full (reason queue_full) or the broker did not acknowledge them (reason not_acknowledged). "
    "Outbox rows among them reach the broker through the worker's relay, after "
    "outbox.relay_min_age_s; the PENDING events among them are not sent.",
    ["reason"], registry=REGISTRY,
)
STATUS_EVENTS_DROPPED = Counter(
    "paystream_status_events_dropped",
    "Status events this API process's status stream skipped because they could not be "
    "applied (logged with the payment id); the rest of their batch went on.",
    registry=REGISTRY,
)
SUBSCRIPTION_UPDATES = Counter(
    "paystream_subscription_updates",
    "Status updates executed for subscribers: 'executed' ran the selection set, 'shared' reused "
    "the result of a subscriber with the same document, variables and audience.",
    ["execution"], registry=REGISTRY,
)
SUBSCRIPTION_PAYLOADS = Counter(
    "paystream_subscription_payloads",
    "Payloads of subscription updates sent: 'encoded' were encoded to JSON for their frame, "
    "'shared' reused the encoding of the same update for the same audience (document, "
    "variables, partner and scopes) written to another subscriber's socket.",
    ["encoding"], registry=REGISTRY,
)

# The webhook sender (``paystream webhooks``). Attempts and latencies are this process's;
# the schedule and endpoint gauges are read from PostgreSQL, so every sender reports the
# same figures (combine them with max).
WEBHOOK_COUNT_CAP = 100_000
WEBHOOK_ATTEMPTS = Counter(
    "paystream_webhook_attempts",
    "Webhook POSTs made by this sender, by what became of the event (delivered; retry: due "
    "again later; given_up: past its retry window; held: its endpoint was disabled; deleted: "
    "its endpoint was deleted meanwhile) and by the answer (2xx, 3xx, 4xx, 5xx, timeout, "
    "connection, refused: an address the URL rules forbid, error: anything else).",
    ["outcome", "response"], registry=REGISTRY,
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "paystream_webhook_attempt_seconds",
    "Time of one webhook attempt: URL check, connect, POST and the answer's first KiB.",
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0),
)
WEBHOOK_DELIVERY_LAG_SECONDS = Histogram(
    "paystream_webhook_delivery_lag_seconds",
    "From an event's time (its createdAt) to its delivery (the 2xx answer), retries included.",
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
             1800.0, 3600.0, 6 * 3600.0, 86400.0, 3 * 86400.0),
)
WEBHOOK_IN_FLIGHT = Gauge(
    "paystream_webhook_in_flight", "Webhook attempts in flight in this sender.",
    registry=REGISTRY,
)
WEBHOOK_SCHEDULED = Counter(
    "paystream_webhook_scheduled",
    "Webhook deliveries (event and endpoint) scheduled by this sender's consumer.",
    registry=REGISTRY,
)
WEBHOOK_SCHEDULE = Gauge(
    "paystream_webhook_schedule",
    "Webhook deliveries not yet settled, by state: due (a sender may take it now), waiting "
    "(its retry time is ahead, it is in flight, or an earlier event of its payment is not "
    f"settled yet) and held (its endpoint is DISABLED). Counted up to {WEBHOOK_COUNT_CAP} each.",
    ["state"], registry=REGISTRY,
)
WEBHOOK_OLDEST_DUE_SECONDS = Gauge(
    "paystream_webhook_oldest_due_seconds",
    "How long the longest-due webhook delivery has been due without a sender taking it "
    "(0 when none is due): the senders are behind, or none is running.", registry=REGISTRY,
)
WEBHOOK_ENDPOINTS = Gauge(
    "paystream_webhook_endpoints", "Webhook endpoints by status (ENABLED, DISABLED).",
    ["status"], registry=REGISTRY,
)


def subscription_opened() -> None:
    OPEN_SUBSCRIPTIONS.inc()


def subscription_closed() -> None:
    OPEN_SUBSCRIPTIONS.dec()


class _CacheCollector(Collector):
    """Reads the cache's own hit and miss counters at scrape time (no double bookkeeping)."""

    def __init__(self) -> None:
        self.read: Callable[[], tuple[int, int, int, int]] | None = None

    def collect(self) -> Iterable[Metric]:
        hits, misses, page_hits, page_misses = self.read() if self.read is not None else (
            0, 0, 0, 0)
        family = CounterMetricFamily(
            "paystream_cache_lookups", "Redis cache lookups by result.", labels=["result"]
        )
        family.add_metric(["hit"], hits)
        family.add_metric(["miss"], misses)
        yield family
        pages = CounterMetricFamily(
            "paystream_page_cache_lookups",
            "Account page lookups in Redis by result (a miss reads the page on the primary).",
            labels=["result"])
        pages.add_metric(["hit"], page_hits)
        pages.add_metric(["miss"], page_misses)
        yield pages


_cache = _CacheCollector()
REGISTRY.register(_cache)


def watch_cache(read: Callable[[], tuple[int, int, int, int]]) -> None:
    """Report the process's cache counters: ``read`` returns (hits, misses) of entities, then
    of account pages."""
    _cache.read = read


def record_readiness(checks: Mapping[str, bool]) -> None:
    """Export one readiness report (``{check: passed}``) as ``paystream_ready``."""
    for check, passed in checks.items():
        READY.labels(check).set(1 if passed else 0)


def render() -> bytes:
    """The exposition text of every series."""
    return generate_latest(REGISTRY)


def serve_metrics(host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` from a daemon thread (roles without the gateway: the worker, the
    webhook sender).
    Port 0 picks a free one (``server.server_port``)."""
    return start_http_server(port, addr=host, registry=REGISTRY)


async def sample_forever(parts: Sequence[Callable[[], Awaitable[object]]], interval_s: float,
                         what: str) -> None:
    """Run each sampling part every ``interval_s`` until cancelled. The parts run apart, so
    a database outage does not hide the broker's figures or the reverse; a failed part leaves
    its gauges as they were and is tried again at the next interval."""
    log = logging.getLogger("paystream.metrics")
    while True:
        for part in parts:
            try:
                await part()
            except Exception as exc:  # noqa: BLE001 (a gauge must not take its process down)
                log.warning("%s sample failed (%s)", what, type(exc).__name__)
        await asyncio.sleep(interval_s)
