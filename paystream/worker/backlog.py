"""Backlog gauges of the write path, sampled by each worker process while it serves /metrics.

- ``paystream_outbox_unsent`` and ``paystream_outbox_oldest_unsent_seconds``: requests and
  status events committed but not yet produced (the relay is behind, or the broker is away);
- ``paystream_dlq_messages{topic}``: dead letters ``paystream dlq redrive`` has not examined;
- ``paystream_consumer_lag{group=<worker group>, topic=payments.requested, partition}``:
  requests accepted but not yet posted.

They are read from PostgreSQL and the broker, not from this worker's own state, so every
replica reports the whole group's figures (take ``max``, not ``sum``, across replicas). The
sampler keeps its own small connections and survives any failure of its own: the worker loop
(``main.py``) knows nothing of it; ``cli.py`` runs both with :func:`run_observed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ..config import Settings
from ..db import Database, ReadSession
from ..db.outbox import backlog
from ..events import make_consumer
from ..metrics import (
    CONSUMER_LAG,
    DLQ_MESSAGES,
    OUTBOX_COUNT_CAP,
    OUTBOX_OLDEST_UNSENT_SECONDS,
    OUTBOX_UNSENT,
    serve_metrics,
)
from .redrive import redrive_group

log = logging.getLogger("paystream.backlog")

@dataclass(frozen=True, slots=True)
class Backlog:
    """One sample."""

    outbox_unsent: int
    outbox_oldest_s: float
    dlq_waiting: int
    worker_lag: dict[int, int]  # partition of payments.requested -> requests not yet posted


class BacklogSampler:
    """Reads the backlogs and sets their gauges; ``close`` when done."""

    def __init__(self, settings: Settings) -> None:
        self._kafka = settings.kafka
        # One connection is plenty for one query every few seconds; replicas are not used.
        self._db = Database(settings.db.model_copy(
            update={"replica_urls": [], "pool_size": 1, "max_overflow": 0}))
        self._clients: tuple[AIOKafkaConsumer, AIOKafkaAdminClient] | None = None

    async def sample(self) -> Backlog:
        """Read every backlog once and export it."""
        unsent, oldest = await self.sample_outbox()
        dlq, lag = await self.sample_broker()
        return Backlog(unsent, oldest, dlq, lag)

    async def sample_outbox(self) -> tuple[int, float]:
        """Unsent outbox rows and the oldest one's age, from the primary."""
        unsent, oldest = await self._db.read(outbox_backlog, primary=True)
        OUTBOX_UNSENT.set(unsent)
        OUTBOX_OLDEST_UNSENT_SECONDS.set(oldest)
        return unsent, oldest

    async def sample_broker(self) -> tuple[int, dict[int, int]]:
        """Dead letters waiting, and the worker group's lag per partition, from the broker."""
        clients = await self._connect()
        dlq = sum((await self._waiting(*clients, self._kafka.dlq_topic,
                                       redrive_group(self._kafka))).values())
        DLQ_MESSAGES.labels(self._kafka.dlq_topic).set(dlq)
        topic, group = self._kafka.requested_topic, self._kafka.worker_group
        lag = await self._waiting(*clients, topic, group)
        for partition, behind in lag.items():
            CONSUMER_LAG.labels(group, topic, str(partition)).set(behind)
        return dlq, lag

    async def _connect(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        """The broker clients, made on first use (and again after a failed start)."""
        if self._clients is None:
            kafka = self._kafka
            # No group and no subscription: it only asks for offsets, never joins or fetches.
            consumer = make_consumer(kafka, group_id=None)
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers,
                                        request_timeout_ms=max(kafka.request_timeout_ms, 10_000))
            try:
                await consumer.start()
                await admin.start()
            except BaseException:
                await consumer.stop()
                await admin.close()
                raise
            self._clients = (consumer, admin)
        return self._clients

    @staticmethod
    async def _waiting(consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, topic: str,
                       group: str) -> dict[int, int]:
        """Messages of ``topic`` after ``group``'s committed offsets, per partition (from the
        start of the topic where the group has committed nothing, as the group would read)."""
        found = consumer.partitions_for_topic(topic)
        if not found:
            await consumer._client.force_metadata_update()  # no public way to refresh
            found = consumer.partitions_for_topic(topic)
        partitions = [TopicPartition(topic, p) for p in sorted(found or ())]
        if not partitions:
            return {}
        end = await consumer.end_offsets(partitions)
        start = await consumer.beginning_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
        waiting = {}
        for tp in partitions:
            done = committed[tp].offset if tp in committed else -1
            waiting[tp.partition] = max(0, end[tp] - (done if done >= 0 else start[tp]))
        return waiting

    async def sample_forever(self, interval_s: float) -> None:
        """Sample every ``interval_s`` until cancelled; a failed sample leaves the gauges as
        they were (a broker or database outage shows in other series) and is retried."""
        while True:
            # Apart, so a database outage does not hide the broker's figures or the reverse.
            for part in (self.sample_outbox, self.sample_broker):
                try:
                    await part()
                except Exception as exc:  # noqa: BLE001 (a gauge must not take the worker down)
                    log.warning("backlog sample failed (%s)", type(exc).__name__)
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._clients is not None:
            consumer, admin = self._clients
            self._clients = None
            await consumer.stop()
            await admin.close()
        await self._db.dispose()


async def outbox_backlog(session: ReadSession) -> tuple[int, float]:
    """(unsent outbox rows, capped at ``OUTBOX_COUNT_CAP``; age of the oldest in seconds)."""
    return await backlog(session, cap=OUTBOX_COUNT_CAP)


async def run_observed(settings: Settings, work: Awaitable[None]) -> None:
    """Run ``work`` (the worker) with ``/metrics`` on ``PAYSTREAM_METRICS__WORKER_PORT`` and
    the backlog sampler beside it; with the port 0 (the default), just ``work``."""
    metrics = settings.metrics
    if not metrics.worker_port:
        await work
        return
    server, _ = serve_metrics(metrics.worker_host, metrics.worker_port)
    sampler = BacklogSampler(settings)
    try:
        async with asyncio.TaskGroup() as group:
            sampling = group.create_task(sampler.sample_forever(metrics.sample_interval_s),
                                         name="backlog-sampler")
            try:
                await work
            finally:
                sampling.cancel()
    finally:
        await sampler.close()
        server.shutdown()
        server.server_close()


__all__ = ["Backlog", "BacklogSampler", "outbox_backlog", "run_observed"]
