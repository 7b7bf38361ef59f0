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

from ..config import Settings
from ..db import Database, ReadSession
from ..db.outbox import backlog
from ..events.lag import GroupLag
from ..metrics import (
    CONSUMER_LAG,
    DLQ_MESSAGES,
    OUTBOX_COUNT_CAP,
    OUTBOX_OLDEST_UNSENT_SECONDS,
    OUTBOX_UNSENT,
    sample_forever,
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
        self._lag = GroupLag(settings.kafka)

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
        dlq = sum((await self._lag.waiting(self._kafka.dlq_topic,
                                           redrive_group(self._kafka))).values())
        DLQ_MESSAGES.labels(self._kafka.dlq_topic).set(dlq)
        topic, group = self._kafka.requested_topic, self._kafka.worker_group
        lag = await self._lag.waiting(topic, group)
        for partition, behind in lag.items():
            CONSUMER_LAG.labels(group, topic, str(partition)).set(behind)
        return dlq, lag

    async def sample_forever(self, interval_s: float) -> None:
        await sample_forever((self.sample_outbox, self.sample_broker), interval_s, "backlog")

    async def close(self) -> None:
        await self._lag.close()
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
