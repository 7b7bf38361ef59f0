"""Prometheus series of one process, served by the gateway at ``/metrics``.

Any role may record into them (the gateway, the resolvers' DataLoaders, subscription and worker
code): this module imports nothing of the project. Values are per process; with
``paystream api --workers N`` each scrape reads one worker (docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = [
    "CONSUMER_LAG",
    "CONTENT_TYPE_LATEST",
    "DATALOADER_BATCH_SIZE",
    "ERRORS",
    "OPEN_SUBSCRIPTIONS",
    "OUTBOX_OLDEST_UNSENT",
    "OUTBOX_UNSENT",
    "PERSISTED_QUERIES",
    "RATE_LIMITED",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_SECONDS",
    "SQL_STATEMENTS",
    "SUBSCRIPTION_UPDATES",
    "render",
    "subscription_closed",
    "subscription_opened",
    "watch_cache",
]

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "paystream_graphql_requests", "GraphQL operations served over HTTP.",
    ["operation", "type"], registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "paystream_graphql_request_seconds", "Time to execute a GraphQL operation.",
    ["operation", "type"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
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
OUTBOX_UNSENT = Gauge(
    "paystream_outbox_unsent", "Outbox rows (accepted requests, status events) not yet produced.",
    registry=REGISTRY,
)
OUTBOX_OLDEST_UNSENT = Gauge(
    "paystream_outbox_oldest_unsent_seconds",
    "Age of the oldest outbox row not yet produced (0 when none).", registry=REGISTRY,
)
OPEN_SUBSCRIPTIONS = Gauge(
    "paystream_open_subscriptions", "GraphQL subscriptions open in this process.",
    registry=REGISTRY,
)

SUBSCRIPTION_UPDATES = Counter(
    "paystream_subscription_updates",
    "Status updates executed for subscribers: 'executed' ran the selection set, 'shared' reused "
    "the result of a subscriber with the same document, variables and audience.",
    ["execution"], registry=REGISTRY,
)


def subscription_opened() -> None:
    OPEN_SUBSCRIPTIONS.inc()


def subscription_closed() -> None:
    OPEN_SUBSCRIPTIONS.dec()


class _CacheCollector(Collector):
    """Reads the cache's own hit and miss counters at scrape time (no double bookkeeping)."""

    def __init__(self) -> None:
        self.read: Callable[[], tuple[int, int]] | None = None

    def collect(self) -> Iterable[Metric]:
        hits, misses = self.read() if self.read is not None else (0, 0)
        family = CounterMetricFamily(
            "paystream_cache_lookups", "Redis cache lookups by result.", labels=["result"]
        )
        family.add_metric(["hit"], hits)
        family.add_metric(["miss"], misses)
        yield family


_cache = _CacheCollector()
REGISTRY.register(_cache)


def watch_cache(read: Callable[[], tuple[int, int]]) -> None:
    """Report the process's cache counters: ``read`` returns (hits, misses)."""
    _cache.read = read


def render() -> bytes:
    """The exposition text of every series."""
    return generate_latest(REGISTRY)
