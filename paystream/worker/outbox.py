"""The outbox relay: every committed message reaches its topic, whoever committed it.

The worker hands each committed batch's status events to :meth:`OutboxRelay.produce` (through
``worker.pipeline``, which marks their rows sent); the API's publisher produces the requests it
accepted. :meth:`OutboxRelay.sweep_forever`
publishes whatever either left unsent (a crash after commit, a broker outage), oldest first,
and prunes rows sent more than ``retention_days`` ago in bounded batches (and the events
feed's rows past ``events_retention_days``, finished webhook events and attempts past
``webhooks_retention_days``). Publishing twice is
harmless: the worker skips a request already posted, and every status consumer keeps the
highest version it has seen per payment. Each message is sent with the trace context stored
with it (``paystream.tracing``), so a trace continues across the wait in the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ..config import OutboxSettings
from ..db import Database
from ..db.events import EventRecord
from ..db.events import by_ids as events_by_ids
from ..db.events import prune as prune_events
from ..db.outbox import OutboxRow, claim_unsent, mark_sent, prune_sent
from ..db.webhooks import prune_finished as prune_webhooks
from ..events.messages import PaymentStatusEvent
from ..retry import until_done
from ..tracing import Carrier, sending

log = logging.getLogger("paystream.outbox")


class OutboxRelay:
    def __init__(self, db: Database, producer: AIOKafkaProducer, *, topic: str,
                 requested_topic: str, settings: OutboxSettings,
                 on_wait: Callable[[], None] | None = None) -> None:
        self._db = db
        self._producer = producer
        self._topic = topic
        self._requested_topic = requested_topic
        self._settings = settings
        self._on_wait = on_wait
        self.published = 0

    async def produce(self, events: Sequence[PaymentStatusEvent],
                      payloads: Sequence[bytes] = ()) -> bool:
        """Produce the events (acks=all); whether all were acknowledged. Their outbox rows
        are for the caller to mark sent (``worker.pipeline``); a failure leaves them to the
        sweep. ``payloads``: the events' JSON as their rows hold it (encoded here when not
        given)."""
        if not events:
            return True
        try:
            futures = []
            for i, e in enumerate(events):
                with sending(self._topic, e.trace, {"paystream.payment_id": str(e.payment_id),
                                                    "paystream.payment.status": e.status}
                             ) as headers:
                    futures.append(await self._producer.send(
                        self._topic, payloads[i] if payloads else e.encode(),
                        key=str(e.payment_id).encode(), headers=headers))
            await asyncio.gather(*futures)
        except KafkaError as exc:
            log.warning("status publish failed (%s); the sweep will retry", type(exc).__name__)
            return False
        self.published += len(events)
        return True

    async def sweep_once(self, *, min_age_s: float | None = None, limit: int | None = None) -> int:
        """Publish unsent rows older than ``min_age_s``, in id order, holding their locks so
        that another relay skips them; returns how many messages were published. ``limit``
        bounds the messages (a row of a posting's events counts as its events; the first
        row is taken whatever its size)."""
        age = self._settings.relay_min_age_s if min_age_s is None else min_age_s
        limit = limit or self._settings.relay_batch
        async with self._db.write_session() as session:
            rows = await claim_unsent(session, min_age_s=age, limit=limit)
            taken: list[OutboxRow] = []
            messages = 0
            for row in rows:
                if taken and messages + row.messages > limit:
                    break  # left unsent (its lock ends with this transaction): the next sweep's
                taken.append(row)
                messages += row.messages
            if not taken:
                return 0
            feed = {r.position.id: r for r in await events_by_ids(
                session, [i for row in taken for i in row.event_ids or ()])}
            futures = []
            for row in taken:
                for topic, key, value, trace, attributes in _messages(row, feed):
                    with sending(topic, trace, attributes) as headers:
                        futures.append(await self._producer.send(topic, value, key=key,
                                                                 headers=headers))
            await asyncio.gather(*futures)
            await mark_sent(session, [row.id for row in taken])
        log.info("outbox relay published %d messages of %d rows", len(futures), len(taken))
        self.published += len(futures)
        return len(futures)

    async def prune_once(self) -> int:
        """Delete one bounded batch of rows sent longer ago than the retention."""
        async with self._db.write_session() as session:
            return await prune_sent(session, retention_days=self._settings.retention_days,
                                    requested_topic=self._requested_topic,
                                    limit=self._settings.prune_batch)

    async def prune_events_once(self) -> int:
        """Delete one bounded batch of the events feed's rows past its retention (30 days)."""
        async with self._db.write_session() as session:
            return await prune_events(session, keep_days=self._settings.events_retention_days,
                                      limit=self._settings.prune_batch)

    async def prune_webhooks_once(self) -> int:
        """Delete one bounded batch of webhook attempts and finished webhook events past
        their retention (30 days)."""
        async with self._db.write_session() as session:
            return await prune_webhooks(session, keep_days=self._settings.webhooks_retention_days,
                                        limit=self._settings.prune_batch)

    async def sweep_forever(self) -> None:
        """Sweep and prune every ``relay_interval_s``; each step retried under the fault
        policy, so an outage delays the relay and never ends it."""
        while True:
            while await until_done("outbox sweep", self.sweep_once, on_sleep=self._on_wait):
                pass
            # Each prune again while its batch came back full.
            for name, prune in (("outbox prune", self.prune_once),
                                ("events prune", self.prune_events_once),
                                ("webhooks prune", self.prune_webhooks_once)):
                while await until_done(name, prune, on_sleep=self._on_wait) \
                        >= self._settings.prune_batch:
                    pass
            await asyncio.sleep(self._settings.relay_interval_s)


def _messages(row: OutboxRow, feed: dict[int, EventRecord]
              ) -> Iterator[tuple[str, bytes, bytes, Carrier | None, dict[str, int]]]:
    """(topic, key, value, trace context, span attributes) of each message of ``row``: its
    payload, or each of its events still in the feed (one pruned, 30 days on, is gone)."""
    if row.event_ids is None:
        assert row.payload is not None  # the table's CHECK: one or the other
        yield row.topic, row.key.encode(), row.payload.encode(), row.trace, {
            "paystream.outbox_id": row.id}
        return
    for event_id, trace in zip(row.event_ids, row.traces, strict=True):
        record = feed.get(event_id)
        if record is not None:
            yield row.topic, str(record.event.payment_id).encode(), record.event.encode(), \
                trace, {"paystream.outbox_id": row.id, "paystream.event_id": event_id}
