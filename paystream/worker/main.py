"""The payment processor: consume ``payments.requested``, post, publish, then commit offsets.

Order per batch: decode (poison to the dead-letter topic) -> one database transaction on the
primary -> commit the Kafka offsets, while the status events the transaction wrote to the
outbox are published by :mod:`.pipeline` in posting order (their rows marked sent by a later
posting's transaction). A crash anywhere before the offset commit means the batch is
consumed again, which changes nothing (payments no longer PENDING are skipped); a crash
between commit and publish leaves outbox rows the relay publishes.

Faults (a lost primary, a statement or lock timeout, a deadlock, a broker that does not
answer) are retried under :mod:`paystream.retry`'s policy and never dead-lettered; a batch
the database refuses with a data error is bisected until the request that causes it is alone,
and only that one is parked. No rebalance outcome stops the worker: an offset commit refused
because the partition moved (or is moving) rewinds to the committed offsets and polls again.
Anything that does end the worker propagates, and ``paystream worker`` exits non-zero.

Traced (``paystream.tracing``), each request is processed in a span that continues the trace
its message carries (the API operation that accepted it), and its status event is written and
sent with that span's context.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from ..cache import VersionedCache
from ..config import Settings
from ..db import Database
from ..domain.currency import CURRENCY_EXPONENTS
from ..domain.money import MAX_MINOR_UNITS
from ..events import PaymentRequested, UndecodableMessage, make_consumer, make_producer
from ..events.kafka import ensure_topics_with_retry, start_with_retry
from ..events.messages import PaymentCommand, RefundRequested, decode_requested
from ..retry import sqlstate, until_done
from ..tracing import Carrier, carrier_of_headers, processing_batch
from .holds import expire_due, post_commands
from .outbox import OutboxRelay
from .pipeline import PublishPipeline
from .posting import BatchResult, Traces, post_batch
from .refunds import post_refunds

Message = PaymentRequested | PaymentCommand | RefundRequested

log = logging.getLogger("paystream.worker")


def validate_request(request: Message) -> None:
    """The checks the worker can make without the database; the API made them all before."""
    if isinstance(request, RefundRequested):
        if not 0 < request.amount_minor <= MAX_MINOR_UNITS:
            raise UndecodableMessage("amount_minor out of range")
        return
    if isinstance(request, PaymentCommand):
        if request.amount_minor is not None and not 0 < request.amount_minor <= MAX_MINOR_UNITS:
            raise UndecodableMessage("amount_minor out of range")
        return
    payment = request.payment
    if not 0 < payment.amount_minor <= MAX_MINOR_UNITS:
        raise UndecodableMessage("amount_minor out of range")
    if payment.currency not in CURRENCY_EXPONENTS:
        raise UndecodableMessage("unknown currency")
    if not 1 <= len(payment.idempotency_key) <= 255:
        raise UndecodableMessage("idempotency_key length")


class PaymentWorker:
    """One member of the worker consumer group."""

    def __init__(self, settings: Settings, *, heartbeat: Path | None = None) -> None:
        self.settings = settings
        # Touched while the worker polls, and while it waits out a fault: a container health
        # check reads its age.
        self.heartbeat = heartbeat
        self._last_beat = 0.0
        self.db = Database(settings.db)
        kafka = settings.kafka
        self.consumer: AIOKafkaConsumer = make_consumer(
            kafka, kafka.requested_topic, group_id=kafka.worker_group,
            max_poll_records=kafka.worker_batch_size,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_interval_ms=kafka.max_poll_interval_ms,
        )
        self.producer: AIOKafkaProducer = make_producer(kafka, linger_ms=2)
        self.relay = OutboxRelay(self.db, self.producer, topic=kafka.status_topic,
                                 requested_topic=kafka.requested_topic, settings=settings.outbox,
                                 on_wait=self._beat)
        self.cache = VersionedCache(settings.redis)
        self.pipeline = PublishPipeline(settings, self.db, self.cache, self.relay,
                                        on_wait=self._beat)
        self.processed = 0
        self.rewinds = 0  # offset commits refused by a rebalance

    async def run(self) -> None:
        await ensure_topics_with_retry(self.settings.kafka)
        await start_with_retry(self.producer)
        await start_with_retry(self.consumer)
        log.info("worker started")
        try:
            # The relay and the poll loop live and die together: if either ends, the other is
            # cancelled and the error reaches run_worker (and the process's exit code).
            async with asyncio.TaskGroup() as group:
                group.create_task(self.relay.sweep_forever(), name="outbox-relay")
                group.create_task(self.pipeline.run(), name="publish")
                group.create_task(self._consume(), name="consume")
                group.create_task(self._expire_forever(), name="authorization-expiry")
        finally:
            await self.pipeline.drain(self.settings.kafka.request_timeout_ms / 1000)
            await self.consumer.stop()
            await self.producer.stop()
            await self.cache.close()
            await self.db.dispose()

    async def _consume(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(
                    timeout_ms=200, max_records=self.settings.kafka.worker_batch_size
                )
            except (IllegalStateError, KafkaError) as exc:
                # A rebalance in progress, the coordinator moving: poll again shortly.
                log.warning("poll failed (%s); polling again", type(exc).__name__)
                self._beat()
                await asyncio.sleep(0.2)
                continue
            if batches:
                await self._handle(batches)
            await self.cache.flush_unwritten()
            self._beat()

    def _beat(self) -> None:
        now = time.monotonic()
        if self.heartbeat is not None and now - self._last_beat >= 1.0:
            self.heartbeat.touch()
            self._last_beat = now

    async def _handle(self, batches: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]
                      ) -> None:
        """One poll's records, all partitions together: each partition's records in runs of
        one kind, in partition order (a capture or cancel is posted after the request that
        placed its hold, and a payment after the capture queued before it). The first runs
        of every partition are posted together (one batch per kind), then the second runs,
        and so on: partitions share nothing, so only each one's own order matters, and in a
        drain one poll is one transaction, not one per partition."""
        runs: list[list[tuple[list[Message], dict[uuid.UUID, Carrier | None]]]] = []
        for records in batches.values():
            mine: list[tuple[list[Message], dict[uuid.UUID, Carrier | None]]] = []
            for record in records:
                try:
                    request = decode_requested(record.value)
                    validate_request(request)
                except UndecodableMessage as exc:
                    await self._dead_letter(record, str(exc))
                    continue
                if not mine or type(mine[-1][0][-1]) is not type(request):
                    mine.append(([], {}))
                run, parents = mine[-1]
                run.append(request)
                # The trace each payment's message carries.
                parents.setdefault(request.payment_id, carrier_of_headers(record.headers))
            runs.append(mine)
        for depth in range(max((len(r) for r in runs), default=0)):
            merged: dict[type, tuple[list[Message], dict[uuid.UUID, Carrier | None]]] = {}
            for mine in runs:
                if depth < len(mine):
                    run, parents = mine[depth]
                    into, into_parents = merged.setdefault(type(run[0]), ([], {}))
                    into.extend(run)
                    into_parents.update(parents)
            for run, parents in merged.values():
                await self._post_traced(run, parents)
        self.processed += sum(len(records) for records in batches.values())
        try:
            await self.consumer.commit({tp: records[-1].offset + 1
                                        for tp, records in batches.items() if records})
        except (IllegalStateError, KafkaError) as exc:
            # A partition moved to another member (or is moving) during a rebalance. What
            # was posted is committed in the database; whoever owns a partition now consumes
            # the batch again from the committed offset, which changes nothing.
            self.rewinds += 1
            log.warning("offset commit on %s refused (%s); polling again from the committed "
                        "offsets", ", ".join(map(str, batches)), type(exc).__name__)
            for tp in batches:
                await self._rewind(tp)

    async def _rewind(self, tp: TopicPartition) -> None:
        """Drop the position past the uncommitted batch: if the partition is still ours, the
        next poll starts at its committed offset again."""
        if tp not in self.consumer.assignment():
            return
        try:
            await self.consumer.seek_to_committed(tp)
        except (IllegalStateError, KafkaError) as exc:
            log.warning("rewinding %s failed (%s); the next rebalance resets it", tp,
                        type(exc).__name__)

    async def _post_traced(self, requests: list[Message],
                           parents: dict[uuid.UUID, Carrier | None]) -> None:
        """:meth:`_post` inside a span per payment of the run, each continuing its message's
        trace; the status events are written and sent with those spans' contexts."""
        with processing_batch(
                self.settings.kafka.requested_topic, parents, batch="post batch",
                attributes=lambda payment_id: {"paystream.payment_id": str(payment_id)},
        ) as traces:
            await self._post(requests, traces)

    async def _post(self, requests: list[Message], traces: Traces) -> None:
        """Post the requests under the fault policy. A data error bisects the batch, so one
        bad request costs a logarithmic number of attempts and parks alone."""
        try:
            result = await until_done(
                f"posting a batch of {len(requests)}", lambda: self._post_once(requests, traces),
                on_sleep=self._beat)
        except Exception as exc:  # noqa: BLE001 (a data error: the policy retries every other)
            if len(requests) == 1:
                code = sqlstate(exc)
                reason = f"database refused: {type(exc).__name__}" + (
                    f" (SQLSTATE {code})" if code else "")
                log.error("request %s refused by the database: %s", requests[0].payment_id, reason)
                await self._dead_letter_request(requests[0], reason)
                return
            half = len(requests) // 2
            await self._post(requests[:half], traces)
            await self._post(requests[half:], traces)
            return
        log.info("batch posted=%d skipped=%d rejected=%d", len(result.events), result.skipped,
                 len(result.rejected))
        for request, reason in result.rejected:
            log.error("request %s dead-lettered: %s", request.payment_id, reason)
            await self._dead_letter_request(request, reason)
        await self._publish(result)

    async def _publish(self, result: BatchResult) -> None:
        await self.pipeline.put(result)

    async def _post_once(self, requests: list[Message], traces: Traces) -> BatchResult:
        topic = self.settings.kafka.status_topic
        # The rows of earlier batches produced meanwhile are marked sent in this commit.
        async with self.pipeline.marks.riding(self.db) as session:
            payments = [r for r in requests if isinstance(r, PaymentRequested)]
            if payments:
                return await post_batch(session, payments, status_topic=topic,
                                        traces=traces)
            refunds = [r for r in requests if isinstance(r, RefundRequested)]
            if refunds:
                return await post_refunds(session, refunds, status_topic=topic,
                                          traces=traces)
            commands = [r for r in requests if isinstance(r, PaymentCommand)]
            return await post_commands(session, commands, status_topic=topic,
                                       traces=traces)

    async def _expire_forever(self) -> None:
        """The system's release of authorizations past their lifetime: every
        ``holds.expiry_interval_s``, a batch of them CANCELED with AUTHORIZATION_EXPIRED
        (SKIP LOCKED, so several workers share the work and a capture in progress wins)."""
        holds = self.settings.holds
        topic = self.settings.kafka.status_topic

        async def expire_once() -> BatchResult:
            async with self.db.write_session() as session:
                return await expire_due(session, limit=holds.expiry_batch, status_topic=topic)

        while True:
            result = await until_done("expiring authorizations", expire_once, on_sleep=self._beat)
            if result.events:
                log.info("authorizations expired=%d", len(result.events))
                await self._publish(result)
            if len(result.events) < holds.expiry_batch:
                await asyncio.sleep(holds.expiry_interval_s)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        log.warning("dead-lettering offset %d of %s: %s", record.offset, record.topic, reason)
        headers = [("reason", reason.encode()), ("source_offset", str(record.offset).encode()),
                   ("source_partition", str(record.partition).encode())]
        await self._send_dlq(record.key, record.value or b"", headers)

    async def _dead_letter_request(self, request: Message, reason: str) -> None:
        await self._send_dlq(str(request.source_account_id).encode(), request.encode(),
                             [("reason", reason.encode())])

    async def _send_dlq(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        envelope = json.dumps({"reason": dict(headers)["reason"].decode(),
                               "original": value.decode("utf-8", "replace")}).encode()
        await until_done("dead-letter produce", lambda: self.producer.send_and_wait(
            self.settings.kafka.dlq_topic, envelope, key=key, headers=headers), on_sleep=self._beat)


async def run_worker(settings: Settings, *, handle_signals: bool = False,
                     heartbeat: Path | None = None) -> None:
    """Run one worker until cancelled (or, with ``handle_signals``, until SIGTERM/SIGINT: the
    batch in hand finishes its transaction or rolls back, and nothing is half-written).
    ``heartbeat``: a file touched about once a second while the worker polls or waits out a
    fault. Anything else that ends the worker is logged with its reason and raised."""
    worker = PaymentWorker(settings, heartbeat=heartbeat)
    task = asyncio.create_task(worker.run())
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("worker stopped after %d messages", worker.processed)
        if not handle_signals:
            raise
    except BaseException as exc:
        log.critical("worker failed after %d messages: %r", worker.processed, exc, exc_info=exc)
        raise


__all__ = ["PaymentWorker", "run_worker"]
