"""The sender's backlog gauges, sampled while it serves ``/metrics``
(``PAYSTREAM_METRICS__WEBHOOKS_PORT``):

- ``paystream_webhook_schedule{state}``: deliveries due now, waiting (a retry ahead, in
  flight, or behind an earlier event of the payment) and held (endpoint DISABLED);
- ``paystream_webhook_oldest_due_seconds``: how long the longest-due delivery has waited for a
  sender (the senders are behind, or none runs);
- ``paystream_webhook_endpoints{status}``: endpoints ENABLED and DISABLED;
- ``paystream_consumer_lag{group=<sender group>, topic=payments.status, partition}``: status
  events not yet scheduled.

They are read from PostgreSQL and the broker, not from this sender's state, so every sender
reports the same figures (take ``max`` across them). Like the worker's sampler it has its own
small connections and survives any failure of its own.
"""

from __future__ import annotations

import logging

from ..config import Settings
from ..db import Database, ReadSession
from ..db.webhook_schedule import ScheduleBacklog, schedule_backlog
from ..events.lag import GroupLag
from ..metrics import (
    CONSUMER_LAG,
    WEBHOOK_COUNT_CAP,
    WEBHOOK_ENDPOINTS,
    WEBHOOK_OLDEST_DUE_SECONDS,
    WEBHOOK_SCHEDULE,
    sample_forever,
)

log = logging.getLogger("paystream.webhooks")


async def _backlog(session: ReadSession) -> ScheduleBacklog:
    return await schedule_backlog(session, cap=WEBHOOK_COUNT_CAP)


class WebhookBacklogSampler:
    """Reads the schedule's backlog and the sender group's lag; ``close`` when done."""

    def __init__(self, settings: Settings) -> None:
        self._kafka = settings.kafka
        self._group = settings.webhooks.group
        # One connection is plenty for two queries every few seconds; replicas are not used.
        self._db = Database(settings.db.model_copy(
            update={"replica_urls": [], "pool_size": 1, "max_overflow": 0}))
        self._lag = GroupLag(settings.kafka)

    async def sample_schedule(self) -> ScheduleBacklog:
        backlog = await self._db.read(_backlog, primary=True)
        for state in ("due", "waiting", "held"):
            WEBHOOK_SCHEDULE.labels(state).set(getattr(backlog, state))
        WEBHOOK_OLDEST_DUE_SECONDS.set(backlog.oldest_due_s)
        for status, count in backlog.endpoints.items():
            WEBHOOK_ENDPOINTS.labels(status).set(count)
        return backlog

    async def sample_lag(self) -> dict[int, int]:
        topic = self._kafka.status_topic
        lag = await self._lag.waiting(topic, self._group)
        for partition, behind in lag.items():
            CONSUMER_LAG.labels(self._group, topic, str(partition)).set(behind)
        return lag

    async def sample_forever(self, interval_s: float) -> None:
        await sample_forever((self.sample_schedule, self.sample_lag), interval_s,
                             "webhook backlog")

    async def close(self) -> None:
        await self._lag.close()
        await self._db.dispose()


__all__ = ["WebhookBacklogSampler"]
