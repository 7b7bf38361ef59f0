"""From status events to the delivery schedule: a consumer group on ``payments.status``.

Each polled batch becomes rows of ``webhook_events`` (one per event and matching endpoint of
every partner owning an account of the payment, each rendered for that partner) in one
transaction; the Kafka offsets are committed only after it. A crash in between consumes the
batch again, and the rows' unique (endpoint, event) key makes that change nothing: at least
once, never lost. An endpoint gets the events that happen after its creation; a DISABLED
endpoint's are scheduled held (not due) until it is enabled again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from ..config import Settings
from ..db import Database, WriteSession
from ..db.accounts import accounts_by_ids
from ..db.webhook_schedule import ScheduledEvent, schedule
from ..db.webhooks import endpoints_for
from ..domain.entities import AccountRow
from ..domain.webhooks import event_id
from ..events.kafka import make_consumer, status_event_of
from ..events.messages import PaymentStatusEvent, UndecodableMessage
from ..metrics import WEBHOOK_SCHEDULED
from ..retry import until_done
from ..tracing import processing_batch
from .payload import kind_of, webhook_body

log = logging.getLogger("paystream.webhooks")


def status_consumer(settings: Settings) -> AIOKafkaConsumer:
    kafka = settings.kafka
    return make_consumer(
        kafka, kafka.status_topic, group_id=settings.webhooks.group, max_poll_records=500,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
    )


async def schedule_events(session: WriteSession, events: Sequence[PaymentStatusEvent]) -> int:
    """Schedule ``events`` for the endpoints that want them; the number of rows added."""
    partners = {p for e in events for p in (e.source_partner_id, e.destination_partner_id)}
    endpoints = await endpoints_for(session, list(partners))
    if not endpoints:
        return 0
    rows: list[ScheduledEvent] = []
    for event in events:
        kind = kind_of(event)
        wanted = [ep for ep in endpoints
                  if ep.partner_id in (event.source_partner_id, event.destination_partner_id)
                  and kind in ep.events]
        if not wanted:
            continue
        payment = event.payment
        accounts: dict[uuid.UUID, AccountRow] = {a.id: a for a in event.accounts or ()}
        if not accounts:
            # The API's PENDING event carries no accounts (they did not change).
            accounts = await accounts_by_ids(
                session, [payment.source_account_id, payment.destination_account_id])
        identity = event_id(event.payment_id, event.version)
        bodies: dict[uuid.UUID, str] = {}
        for endpoint in wanted:
            if payment.updated_at < endpoint.created_at:
                continue  # it happened before the endpoint existed
            if endpoint.partner_id not in bodies:
                bodies[endpoint.partner_id] = webhook_body(event, payment, accounts,
                                                           endpoint.partner_id)
            rows.append(ScheduledEvent(
                event_id=identity, endpoint_id=endpoint.id, payment_id=event.payment_id,
                version=event.version, type=kind, body=bodies[endpoint.partner_id],
                trace=event.trace))
    return await schedule(session, rows)


class Ingest:
    """The consuming half of a sender."""

    def __init__(self, settings: Settings, db: Database, *,
                 on_scheduled: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._db = db
        self._on_scheduled = on_scheduled
        self.consumer = status_consumer(settings)
        self.scheduled = 0

    async def run(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=200)
            except (IllegalStateError, KafkaError) as exc:
                # A rebalance in progress, the coordinator moving: poll again shortly.
                log.warning("poll failed (%s); polling again", type(exc).__name__)
                await asyncio.sleep(0.2)
                continue
            for tp, records in batches.items():
                await self._handle(tp, records)

    async def _handle(self, tp: TopicPartition,
                      records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        events = []
        for record in records:
            try:
                events.append(status_event_of(record))
            except UndecodableMessage as exc:
                log.warning("undecodable status event at offset %d skipped: %s",
                            record.offset, exc)

        # Traced, each event is scheduled in a span continuing its trace, and its rows keep
        # that span's context for the attempts.
        with processing_batch(
                self._settings.kafka.status_topic,
                {(e.payment_id, e.version): e.trace for e in events}, batch="schedule webhooks",
                attributes=lambda key: {"paystream.payment_id": str(key[0]),
                                        "paystream.payment.version": key[1]}) as traces:
            traced = [e if traces[(e.payment_id, e.version)] is e.trace
                      else replace(e, trace=traces[(e.payment_id, e.version)]) for e in events]

            async def once() -> int:
                async with self._db.write_session() as session:
                    return await schedule_events(session, traced)

            added = await until_done("scheduling webhooks", once) if traced else 0
        self.scheduled += added
        WEBHOOK_SCHEDULED.inc(added)
        if added and self._on_scheduled is not None:
            self._on_scheduled()
        try:
            await self.consumer.commit({tp: records[-1].offset + 1})
        except (IllegalStateError, KafkaError) as exc:
            # The partition moved: its new owner schedules the batch again (no change).
            log.warning("offset commit on %s refused (%s); polling again", tp, type(exc).__name__)
            if tp in self.consumer.assignment():
                try:
                    await self.consumer.seek_to_committed(tp)
                except (IllegalStateError, KafkaError):
                    pass


__all__ = ["Ingest", "schedule_events", "status_consumer"]
