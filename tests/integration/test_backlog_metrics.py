"""The worker's backlog gauges read the real servers: unsent outbox rows and their age, dead
letters not yet examined, and the worker group's lag.

Topics and groups of its own, so the figures are exact whatever else the session runs."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from paystream.db import Database, ReadSession
from paystream.events import make_consumer, make_producer
from paystream.events.kafka import ensure_topics
from paystream.metrics import REGISTRY
from paystream.worker.backlog import BacklogSampler, outbox_backlog
from paystream.worker.redrive import redrive_group

pytestmark = pytest.mark.integration


async def _commit(settings, group: str, tp: TopicPartition, offset: int) -> None:  # type: ignore[no-untyped-def]
    consumer = make_consumer(settings, group_id=group)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def test_dead_letters_and_lag_count_what_the_groups_have_not_handled(migrated) -> None:
    suffix = uuid.uuid4().hex[:8]
    kafka = migrated.kafka.model_copy(update={
        "requested_topic": f"backlog.requested.{suffix}", "status_topic": f"backlog.status.{suffix}",
        "dlq_topic": f"backlog.dlq.{suffix}", "worker_group": f"backlog-{suffix}", "partitions": 1,
    })
    await ensure_topics(kafka)
    producer = make_producer(kafka)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(kafka.requested_topic, b"{}", key=f"k{i}".encode())
        for i in range(2):
            await producer.send_and_wait(kafka.dlq_topic, b"{}", key=f"d{i}".encode())
    finally:
        await producer.stop()
    sampler = BacklogSampler(migrated.model_copy(update={"kafka": kafka}))
    try:
        # No group has committed anything: everything is waiting.
        first = await sampler.sample()
        assert (first.dlq_waiting, first.worker_lag) == (2, {0: 3})
        # The worker group posted one request, the re-drive examined one letter.
        await _commit(kafka, kafka.worker_group, TopicPartition(kafka.requested_topic, 0), 1)
        await _commit(kafka, redrive_group(kafka), TopicPartition(kafka.dlq_topic, 0), 1)
        second = await sampler.sample()
        assert (second.dlq_waiting, second.worker_lag) == (1, {0: 2})
    finally:
        await sampler.close()
    assert REGISTRY.get_sample_value("paystream_dlq_messages", {"topic": kafka.dlq_topic}) == 1
    assert REGISTRY.get_sample_value("paystream_consumer_lag", {
        "group": kafka.worker_group, "topic": kafka.requested_topic, "partition": "0"}) == 2
    assert REGISTRY.get_sample_value("paystream_outbox_unsent") == second.outbox_unsent


async def test_outbox_backlog_counts_unsent_rows_and_the_oldest_age(migrated) -> None:
    db = Database(migrated.db)
    try:
        # Inside one transaction that is rolled back: no relay of the session ever sees the
        # row, so nothing can publish it between the insert and the count.
        async with AsyncSession(db.primary) as session, session.begin():
            before, _ = await outbox_backlog(ReadSession(session))
            await session.execute(text(
                "INSERT INTO outbox (topic, key, payload, created_at)"
                " VALUES (:topic, 'k', '{}', now() - interval '1 hour'), (:topic, 'k', '{}', now())"),
                {"topic": f"backlog.unused.{uuid.uuid4().hex[:8]}"})
            unsent, oldest = await outbox_backlog(ReadSession(session))
            await session.rollback()
    finally:
        await db.dispose()
    assert unsent >= before + 2
    assert oldest >= 3600  # the hour-old row (an older one left by another test would do too)
