"""Producing what the API committed, right after the commit, in batches.

createPayment commits its payment and the ``payments.requested`` message together (the
outbox) and answers; it does not wait for the broker. This publisher takes the committed
messages from a queue, produces everything queued at once (one batch, not a round trip per
request) and waits for the acknowledgements. The acknowledged rows are marked sent by the
next acceptance's own transaction (one more statement in a commit that happens anyway, as the
worker's pipeline does with its postings), or by the publisher itself after
``mark_after_s`` without one: the next batch is produced without waiting for a commit of
marks. Whatever it cannot produce (the broker is down, the process dies first, the queue is
full) stays unsent in the outbox, and the worker's relay publishes it: the publisher never
retries, so there is one owner of retries and no unbounded memory. A row produced but not
marked yet when the process dies is published again by the relay (at least once, as ever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ..config import Settings
from ..db import Database
from ..db.outbox import Marks
from ..domain.errors import Unavailable
from ..metrics import PUBLISHER_LEFT_TO_RELAY
from ..tracing import Carrier, sending

log = logging.getLogger("paystream.publisher")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to produce; ``outbox_id`` is its committed row (None: best effort only);
    ``trace`` the context it is sent on with (the operation that accepted it)."""

    topic: str
    key: bytes
    value: bytes
    outbox_id: int | None = None
    trace: Carrier | None = None


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
                    async with asyncio.timeout(self._settings.kafka.produce_timeout_s):
                        await producer.start()
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
                 max_queued: int = 20_000, max_batch: int = 1_000,
                 mark_after_s: float = 0.02) -> None:
        self._settings = settings
        self._db = db
        self._producer = producer
        # Groups of messages submitted together (a payment's request and its event; a bulk
        # request's all), never split between produce batches; the bound counts messages.
        self._queue: asyncio.Queue[tuple[Outgoing, ...]] = asyncio.Queue()
        self._max_queued = max_queued
        self._queued = 0
        self._carry: tuple[Outgoing, ...] | None = None  # the group that starts the next batch
        self._max_batch = max_batch
        self.dropped = 0  # queue full: left to the relay
        self.published = 0
        self._in_flight = 0
        self._stopping = False
        self._wake: asyncio.Future[None] | None = None
        self._mark_after_s = mark_after_s
        self.marks = Marks()  # produced, not yet marked sent: the next acceptance takes them

    @property
    def busy(self) -> bool:
        """Whether messages are queued or being produced, or rows produced are still to be
        marked sent."""
        return (self._in_flight > 0 or self._carry is not None or not self._queue.empty()
                or bool(self.marks))

    def submit(self, *messages: Outgoing) -> None:
        """Queue committed messages as one group, produced in one batch (a group larger than
        ``max_batch`` is a batch of its own); never waits. A full queue leaves the whole group
        to the relay."""
        if not messages:
            return
        if self._queued + len(messages) > self._max_queued:
            self.dropped += len(messages)
            PUBLISHER_LEFT_TO_RELAY.labels("queue_full").inc(len(messages))
            return
        self._queued += len(messages)
        self._queue.put_nowait(messages)

    def _take(self, first: tuple[Outgoing, ...]) -> list[Outgoing]:
        """``first`` and the groups queued behind it, up to ``max_batch`` messages (whole
        groups only: one that does not fit starts the next batch)."""
        batch = list(first)
        while self._carry is None and not self._queue.empty():
            group = self._queue.get_nowait()
            if len(batch) + len(group) > self._max_batch:
                self._carry = group
            else:
                batch.extend(group)
        self._queued -= len(batch)
        return batch

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand (what is queued stays for
        :meth:`drain`). A flag and a wake-up, not only a cancellation: Python 3.11's
        ``wait_for`` can swallow a cancellation that arrives as its inner call completes, and
        a publisher that missed its cancel waited on its queue for ever at shutdown."""
        self._stopping = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self) -> None:
        """Produce batches until stopped (or cancelled); a failed batch is left to the relay."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if self._carry is not None:
                first, self._carry = self._carry, None
                batch = self._take(first)
            elif self._queue.empty():
                self._wake = loop.create_future()
                getter: asyncio.Future[tuple[Outgoing, ...]] = asyncio.ensure_future(
                    self._queue.get())
                waiting: set[asyncio.Future[Any]] = {getter, self._wake}
                # With rows to mark, wait only so long for an acceptance to take them.
                timeout = self._mark_after_s if self.marks else None
                try:
                    done, _ = await asyncio.wait(waiting, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not getter.done():
                        getter.cancel()
                if not done:
                    await self._mark_own()
                    continue
                if not getter.done() or getter.cancelled():
                    continue
                batch = self._take(getter.result())
            else:
                batch = self._take(self._queue.get_nowait())
            try:
                await self._publish(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (the rows stay unsent; the relay has them)
                PUBLISHER_LEFT_TO_RELAY.labels("not_acknowledged").inc(len(batch))
                log.warning("publishing %d messages failed (%s); the relay will publish them",
                            len(batch), type(exc).__name__)

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: publish what is queued, within ``timeout_s``; the rest is the relay's."""
        batch: list[Outgoing] = list(self._carry or ())
        self._carry = None
        while not self._queue.empty():
            batch.extend(self._queue.get_nowait())
        self._queued = 0
        try:
            async with asyncio.timeout(timeout_s):
                if batch:
                    await self._publish(batch)
                await self._mark_own()
        except Exception as exc:  # noqa: BLE001 (as in run)
            log.warning("%d messages left to the relay at shutdown (%s)", len(batch),
                        type(exc).__name__)

    async def _publish(self, batch: list[Outgoing]) -> None:
        self._in_flight += 1
        try:
            await self._produce(batch)
        finally:
            self._in_flight -= 1

    async def _produce(self, batch: list[Outgoing]) -> None:
        producer = await self._producer.get()
        timeout = self._settings.kafka.request_timeout_ms / 1000 + 2.0
        futures: list[Awaitable[object]] = []
        # asyncio.timeout, not wait_for: it never swallows a cancellation (see stop()).
        async with asyncio.timeout(timeout):
            for message in batch:
                with sending(message.topic, message.trace) as headers:
                    futures.append(await producer.send(message.topic, message.value,
                                                       key=message.key, headers=headers))
            results = await asyncio.gather(*futures, return_exceptions=True)
        sent = [m.outbox_id for m, r in zip(batch, results, strict=True)
                if m.outbox_id is not None and not isinstance(r, BaseException)]
        failed = sum(isinstance(r, BaseException) for r in results)
        if failed:
            PUBLISHER_LEFT_TO_RELAY.labels("not_acknowledged").inc(failed)
            log.warning("%d of %d messages not acknowledged; the relay will publish them",
                        failed, len(batch))
        self.marks.add(sent)
        self.published += len(batch) - failed

    async def _mark_own(self) -> None:
        """Mark what no acceptance took; a failure keeps the rows for the next try (a process
        that stops first leaves them to the relay, which publishes them again)."""
        try:
            await self.marks.mark_own(self._db)
        except Exception as exc:  # noqa: BLE001 (the rows stay unsent; the relay has them)
            log.warning("marking outbox rows sent failed (%s); kept for the next try",
                        type(exc).__name__)
