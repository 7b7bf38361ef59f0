"""Producer and consumer construction shared by the API, the worker and the relay, and the
decoding of consumed status events."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from ..config import KafkaSettings
from ..tracing import carrier_of_headers
from .messages import PaymentStatusEvent

log = logging.getLogger(__name__)


def make_producer(settings: KafkaSettings, *, linger_ms: int = 0) -> AIOKafkaProducer:
    """acks=all always; the idempotent producer only where the broker supports it (Apache
    Kafka, not the dev broker)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=settings.enable_idempotence,
        linger_ms=linger_ms,
        max_batch_size=settings.producer_batch_bytes,
        request_timeout_ms=settings.request_timeout_ms,
        # Metadata refresh bounded too, so a dead broker is noticed within the produce timeout.
        metadata_max_age_ms=30_000,
        retry_backoff_ms=100,
    )


def make_consumer(
    settings: KafkaSettings, *topics: str, group_id: str | None, **options: object
) -> AIOKafkaConsumer:
    options.setdefault("auto_offset_reset", "earliest")
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        request_timeout_ms=max(settings.request_timeout_ms, 40_000),
        **options,
    )


def status_event_of(record: ConsumerRecord[bytes, bytes]) -> PaymentStatusEvent:
    """The event a ``payments.status`` record carries, with the trace context of its headers;
    raises :class:`~.messages.UndecodableMessage`."""
    event = PaymentStatusEvent.decode(record.value)
    trace = carrier_of_headers(record.headers)
    return event if trace is None else replace(event, trace=trace)


async def start_with_retry(client: AIOKafkaProducer | AIOKafkaConsumer, *, attempts: int = 30) -> None:
    """Start a client, retrying while the broker is not up yet (start order of a deployment)."""
    for attempt in range(1, attempts + 1):
        try:
            await client.start()
            return
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning("broker not reachable (%s), retrying", type(exc).__name__)
            await asyncio.sleep(min(0.2 * attempt, 2.0))


async def ensure_topics_with_retry(settings: KafkaSettings, *, attempts: int = 30) -> None:
    """:func:`ensure_topics`, retried while the broker is not reachable (a worker started
    during a broker restart waits for it instead of exiting)."""
    for attempt in range(1, attempts + 1):
        try:
            await ensure_topics(settings)
            return
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning("broker not reachable for topic setup (%s), retrying", type(exc).__name__)
            await asyncio.sleep(min(0.2 * attempt, 2.0))


async def ensure_topics(settings: KafkaSettings) -> None:
    """Create the topics with their partition counts if missing (idempotent).

    Partitions bound how many workers share ``payments.requested``; the broker's
    auto-creation would give one.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                request_timeout_ms=max(settings.request_timeout_ms, 10_000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(settings.requested_topic, settings.partitions, settings.replication_factor),
            NewTopic(settings.status_topic, settings.partitions, settings.replication_factor),
            NewTopic(settings.dlq_topic, 1, settings.replication_factor),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created them in between
    finally:
        await admin.close()
