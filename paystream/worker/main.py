"""The payment processor: consume ``payments.requested``, post, publish, then commit offsets.

Order per batch: decode (poison to the dead-letter topic) -> one database transaction on the
primary -> publish the status events the transaction wrote to the outbox -> mark those outbox
rows sent -> commit the Kafka offsets. A crash anywhere before the offset commit means the
batch is consumed again, which changes nothing (payments no longer PENDING are skipped); a
crash between commit and publish leaves outbox rows the relay publishes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from ..cache import ACCOUNT, PAYMENT, VersionedCache, account_entry, payment_entry
from ..config import Settings
from ..db import Database
from ..db.engine import is_transient, is_unreachable
from ..domain.currency import CURRENCY_EXPONENTS
from ..domain.errors import Unavailable
from ..domain.money import MAX_MINOR_UNITS
from ..events import PaymentRequested, UndecodableMessage, make_consumer, make_producer
from ..events.kafka import ensure_topics_with_retry, start_with_retry
from .outbox import OutboxRelay
from .posting import post_batch

log = logging.getLogger("paystream.worker")


def validate_request(request: PaymentRequested) -> None:
    """The checks the worker can make without the database; the API made them all before."""
    if not 0 < request.amount_minor <= MAX_MINOR_UNITS:
        raise UndecodableMessage("amount_minor out of range")
    if request.currency not in CURRENCY_EXPONENTS:
        raise UndecodableMessage("unknown currency")
    if not 1 <= len(request.idempotency_key) <= 255:
        raise UndecodableMessage("idempotency_key length")


class PaymentWorker:
    """One member of the worker consumer group."""

    def __init__(self, settings: Settings, *, heartbeat: Path | None = None) -> None:
        self.settings = settings
        # Touched while the poll loop turns: a container health check reads its age.
        self.heartbeat = heartbeat
        self._last_beat = 0.0
        self.db = Database(settings.db)
        kafka = settings.kafka
        self.consumer: AIOKafkaConsumer = make_consumer(
            kafka, kafka.requested_topic, group_id=kafka.worker_group,
            max_poll_records=kafka.worker_batch_size,
        )
        self.producer: AIOKafkaProducer = make_producer(kafka, linger_ms=2)
        self.relay = OutboxRelay(self.db, self.producer, topic=kafka.status_topic)
        self.cache = VersionedCache(settings.redis)
        self.processed = 0

    async def run(self) -> None:
        await ensure_topics_with_retry(self.settings.kafka)
        await start_with_retry(self.producer)
        await start_with_retry(self.consumer)
        sweeper = asyncio.create_task(self.relay.sweep_forever(), name="outbox-sweep")
        log.info("worker started")
        try:
            while True:
                batches = await self.consumer.getmany(
                    timeout_ms=200, max_records=self.settings.kafka.worker_batch_size
                )
                for tp, records in batches.items():
                    await self._handle(tp, records)
                await self.cache.flush_unwritten()
                self._beat()
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await self.consumer.stop()
            await self.producer.stop()
            await self.cache.close()
            await self.db.dispose()

    def _beat(self) -> None:
        now = time.monotonic()
        if self.heartbeat is not None and now - self._last_beat >= 1.0:
            self.heartbeat.touch()
            self._last_beat = now

    async def _handle(self, tp: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        requests: list[PaymentRequested] = []
        for record in records:
            try:
                request = PaymentRequested.decode(record.value)
                validate_request(request)
                requests.append(request)
            except UndecodableMessage as exc:
                await self._dead_letter(record, str(exc))
        if requests:
            await self._post(requests)
        try:
            await self.consumer.commit({tp: records[-1].offset + 1})
        except CommitFailedError:
            # The partition moved to another member during a rebalance; it will consume the
            # batch again, which changes nothing.
            log.warning("offset commit refused after a rebalance on %s", tp)
        self.processed += len(records)

    async def _post(self, requests: list[PaymentRequested]) -> None:
        delay = 0.1
        while True:
            try:
                async with self.db.write_session() as session:
                    result = await post_batch(
                        session, requests, status_topic=self.settings.kafka.status_topic
                    )
                break
            except Exception as exc:  # noqa: BLE001 (classified just below: retry or isolate)
                if isinstance(exc, Unavailable) or is_unreachable(exc) or is_transient(exc):
                    what = "transaction conflict" if is_transient(exc) else str(exc)
                    log.warning("%s, retrying the batch in %.1f s", what, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if len(requests) == 1:
                    # A request the database refuses (say, an account that does not exist):
                    # park it rather than block the partition.
                    log.error("request refused by the database: %s", type(exc).__name__)
                    await self._dead_letter_request(requests[0], f"database refused: {type(exc).__name__}")
                    return
                # Isolate the bad request: post one at a time.
                for request in requests:
                    await self._post([request])
                return
        log.info("batch posted=%d skipped=%d", len(result.events), result.skipped)
        # The cache first: a reader sees the committed state even while replicas lag. Versioned
        # writes, so racing with the API's own cache updates cannot move an entry backwards.
        redis = self.settings.redis
        await self.cache.put_many(PAYMENT, {p.id: payment_entry(p) for p in result.payments},
                                  redis.payment_ttl_s)
        await self.cache.put_many(ACCOUNT, {a.id: account_entry(a) for a in result.accounts},
                                  redis.account_ttl_s)
        await self.relay.publish(result.events, result.outbox_ids)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        log.warning("dead-lettering offset %d of %s: %s", record.offset, record.topic, reason)
        headers = [("reason", reason.encode()), ("source_offset", str(record.offset).encode()),
                   ("source_partition", str(record.partition).encode())]
        await self._send_dlq(record.key, record.value or b"", headers)

    async def _dead_letter_request(self, request: PaymentRequested, reason: str) -> None:
        await self._send_dlq(str(request.source_account_id).encode(), request.encode(),
                             [("reason", reason.encode())])

    async def _send_dlq(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        envelope = json.dumps({"reason": dict(headers)["reason"].decode(),
                               "original": value.decode("utf-8", "replace")}).encode()
        while True:
            try:
                await self.producer.send_and_wait(
                    self.settings.kafka.dlq_topic, envelope, key=key, headers=headers
                )
                return
            except KafkaError as exc:
                log.warning("dead-letter produce failed (%s), retrying", type(exc).__name__)
                await asyncio.sleep(0.5)


async def run_worker(settings: Settings, *, handle_signals: bool = False,
                     heartbeat: Path | None = None) -> None:
    """Run one worker until cancelled (or, with ``handle_signals``, until SIGTERM/SIGINT: the
    batch in hand finishes its transaction or rolls back, and nothing is half-written).
    ``heartbeat``: a file touched about once a second while the worker polls."""
    worker = PaymentWorker(settings, heartbeat=heartbeat)
    task = asyncio.create_task(worker.run())
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        if not handle_signals:
            raise
    finally:
        log.info("worker stopped after %d messages", worker.processed)


__all__ = ["PaymentWorker", "run_worker"]
