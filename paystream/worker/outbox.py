"""The outbox relay: status events reach ``payments.status`` after their transaction commits.

The worker hands each committed batch's events straight to ``publish``; ``sweep_forever``
picks up rows a crash left unsent. Publishing twice is harmless: every consumer keeps the
highest version it has seen per payment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import text

from ..db import Database
from ..events.messages import PaymentStatusEvent

log = logging.getLogger("paystream.outbox")

_MARK_SENT = text("UPDATE outbox SET sent_at = now() WHERE id = ANY(CAST(:ids AS bigint[]))")
_UNSENT = text(
    "SELECT id, topic, key, payload::text FROM outbox"
    " WHERE sent_at IS NULL AND created_at < now() - make_interval(secs => :age)"
    " ORDER BY id LIMIT :limit"
)


class OutboxRelay:
    def __init__(self, db: Database, producer: AIOKafkaProducer, *, topic: str) -> None:
        self._db = db
        self._producer = producer
        self._topic = topic
        self.published = 0

    async def publish(self, events: Sequence[PaymentStatusEvent], outbox_ids: Sequence[int]) -> None:
        """Produce the events (acks=all), then mark their outbox rows sent."""
        if not events:
            return
        try:
            futures = [
                await self._producer.send(self._topic, e.encode(), key=str(e.payment_id).encode())
                for e in events
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            # Left unsent; the sweep retries them.
            log.warning("status publish failed (%s); the sweep will retry", type(exc).__name__)
            return
        await self._mark_sent(outbox_ids)
        self.published += len(events)

    async def sweep_once(self, *, min_age_s: float = 5.0, limit: int = 500) -> int:
        """Publish rows older than ``min_age_s`` still unsent (a crash after commit)."""
        async with self._db.write_session() as session:
            rows = list(await session.execute(_UNSENT, {"age": min_age_s, "limit": limit}))
        if not rows:
            return 0
        futures = [
            await self._producer.send(topic, payload.encode(), key=key.encode())
            for _, topic, key, payload in rows
        ]
        await asyncio.gather(*futures)
        await self._mark_sent([row[0] for row in rows])
        log.info("outbox sweep published %d rows", len(rows))
        return len(rows)

    async def sweep_forever(self, interval_s: float = 2.0) -> None:
        while True:
            try:
                while await self.sweep_once() > 0:
                    pass
            except Exception as exc:  # noqa: BLE001 (the sweep must outlive any one failure)
                log.warning("outbox sweep failed (%s)", type(exc).__name__)
            await asyncio.sleep(interval_s)

    async def _mark_sent(self, ids: Sequence[int]) -> None:
        if ids:
            async with self._db.write_session() as session:
                await session.execute(_MARK_SENT, {"ids": list(ids)})

