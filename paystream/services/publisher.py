"""Producing what the API committed, right after the commit, in batches.

createPayment commits its payment and the ``payments.requested`` message together (the
outbox) and answers; it does not wait for the broker. This publisher takes the committed
messages from a queue, produces everything queued at once (one batch, not a round trip per
request), waits for the acknowledgements and marks the acknowledged rows sent with one
statement. Whatever it cannot produce (the broker is down, the process dies first, the queue
is full) stays unsent in the outbox, and the worker's relay publishes it: the publisher never
retries, so there is one owner of retries and no unbounded memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ..config import Settings
from ..db import Database
from ..db.outbox import mark_sent
from ..domain.errors import Unavailable

log = logging.getLogger("paystream.publisher")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to produce; ``outbox_id`` is its committed row (None: best effort only)."""

    topic: str
    key: bytes
    value: bytes
    outbox_id: int | None = None


class LazyProducer:
    """The API's producer, started on first use so the API starts (and serves reads) while
    the broker is down."""

    def __init__(self, settings: Settings) -> None:
        from ..events.kafka import make_producer

        self._settings = settings
        self._make: Callable[[], AIOKafkaProducer] = lambda: make_producer(settings.kafka, linger_ms=1)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = self._make()
                try:
                    await asyncio.wait_for(producer.start(), self._settings.kafka.produce_timeout_s)
                except (KafkaError, OSError, TimeoutError) as exc:
                    await producer.stop()
                    raise Unavailable("the broker is unavailable") from exc
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


class Publisher:
    """One per API process; :meth:`run` is its long-lived task."""

    def __init__(self, settings: Settings, db: Database, producer: LazyProducer, *,
                 max_queued: int = 20_000, max_batch: int = 1_000) -> None:
        self._settings = settings
        self._db = db
        self._producer = producer
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(max_queued)
        self._max_batch = max_batch
        self.dropped = 0  # queue full: left to the relay
        self.published = 0

    def submit(self, *messages: Outgoing) -> None:
        """Queue committed messages; never waits. A full queue leaves them to the relay."""
        for message in messages:
            try:
                self._queue.put_nowait(message)
            except asyncio.QueueFull:
                self.dropped += 1

    async def run(self) -> None:
        """Produce batches until cancelled; a batch that fails is left to the relay."""
        while True:
            # Python 3.11's wait_for returns the result when the awaited call completes just as
            # the task is cancelled, swallowing the cancellation (fixed in 3.12): without this
            # check shutdown waited for ever on the next get (the drain scenario hung there).
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._publish(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (the rows stay unsent; the relay has them)
                log.warning("publishing %d messages failed (%s); the relay will publish them",
                            len(batch), type(exc).__name__)

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: publish what is queued, within ``timeout_s``; the rest is the relay's."""
        batch: list[Outgoing] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if batch:
            try:
                await asyncio.wait_for(self._publish(batch), timeout_s)
            except Exception as exc:  # noqa: BLE001 (as in run)
                log.warning("%d messages left to the relay at shutdown (%s)", len(batch),
                            type(exc).__name__)

    async def _publish(self, batch: list[Outgoing]) -> None:
        producer = await self._producer.get()
        timeout = self._settings.kafka.request_timeout_ms / 1000 + 2.0
        futures: list[Awaitable[object]] = []
        for message in batch:
            futures.append(await asyncio.wait_for(
                producer.send(message.topic, message.value, key=message.key), timeout))
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), timeout)
        sent = [m.outbox_id for m, r in zip(batch, results, strict=True)
                if m.outbox_id is not None and not isinstance(r, BaseException)]
        failed = sum(isinstance(r, BaseException) for r in results)
        if failed:
            log.warning("%d of %d messages not acknowledged; the relay will publish them",
                        failed, len(batch))
        if sent:
            async with self._db.write_session() as session:
                await mark_sent(session, sent)
        self.published += len(batch) - failed
