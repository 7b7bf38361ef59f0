"""The status stream of one API process: one consumer of ``payments.status`` that keeps the
cache current and fans each event out in memory to the process's subscribers.

The consumer has no group: every API process reads every event (each has its own
subscribers). It starts at the end of the topic; a subscriber reads the current state from
the primary after registering here, so nothing between the two is missed. After a lost
connection it resumes where it left off, not at the end.

Each watch has a bounded queue. The hub never waits for a subscriber: when a queue is full the
watch is closed and its ``on_overflow`` callback cuts the connection, so one stalled client
cannot delay the others.

A watch whose subscriber can write an update to its socket itself (``Watch.direct``) is handed
each event at once, with the event's update built once for all of them (``StatusHub.prepare``,
for a whole batch of events in one call), while its stream waits with nothing queued: then the hub's one loop over the watchers sends
every subscriber its frame, and no subscriber's task wakes. Otherwise (its stream is busy or
behind, or it cannot take this update) the event is queued as before.

The PENDING events this process publishes come back to it on the stream too. Their cache
entries and page bumps it wrote itself before publishing them (services/acceptance.py), so
the acceptance hands each one to :meth:`StatusHub.expect` first; when the same bytes come
back, the hub skips their cache writes, and unless one of its watches wants the event it
skips decoding it as well (under bulk load these were a twelfth of the API's CPU, for
nothing). Any other event, or one that is not remembered any more (at most
``OWN_EVENTS_KEPT``, oldest forgotten first), is decoded and applied as before.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import replace
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..cache import ACCOUNT, PAYMENT, Entry, Payload, VersionedCache
from ..cache.entities import account_entry, payment_entry
from ..config import Settings
from ..db.events import Recorded
from ..domain.errors import Unavailable
from ..events.kafka import make_consumer, status_event_of
from ..events.messages import PaymentStatusEvent, UndecodableMessage
from ..metrics import (
    CONSUMER_LAG,
    STATUS_EVENTS_DROPPED,
    subscription_closed,
    subscription_opened,
)
from ..retry import until_done
from ..tracing import carrier_of_headers, processing_batch

log = logging.getLogger("paystream.status")

OWN_EVENTS_KEPT = 20_000
"""Events published by this process that the hub remembers until they come back."""


class WatchClosed(Exception):
    """The watch ended: its queue overflowed, or the process is shutting down."""


class Watch:
    """One subscriber's view of the stream: the events for some payments or accounts."""

    def __init__(self, hub: StatusHub, payments: Iterable[uuid.UUID], accounts: Iterable[uuid.UUID],
                 max_queued: int) -> None:
        self._hub = hub
        self.payments = frozenset(payments)
        self.accounts = frozenset(accounts)
        self._queue: deque[PaymentStatusEvent] = deque()
        self._max_queued = max_queued
        self._waiter: asyncio.Future[None] | None = None
        self.closed: str | None = None
        self.on_overflow: Callable[[], None] | None = None
        # Set by a stream that can send an update itself: called with an event and its update
        # (None when not built) while the stream waits with nothing queued; True when it took
        # the event (sent it, or did not want it), False to have it queued instead.
        self.direct: Callable[[PaymentStatusEvent, object], bool] | None = None
        # Set by such a stream once it sent its last update: its next() returns None.
        self.finished = False
        # Watches of one group (a connection) are handed an event one after another.
        self.group: object = None

    def push(self, event: PaymentStatusEvent, update: object = None) -> None:
        if self.closed is not None or self.finished:
            return
        waiter, direct = self._waiter, self.direct
        if (direct is not None and not self._queue and waiter is not None
                and not waiter.done()):
            try:
                if direct(event, update):
                    return
            except Exception:  # a bug in one subscriber's sending must not stop the hub
                log.exception("subscriber could not send an update itself; queued instead")
                self.direct = None
        if len(self._queue) >= self._max_queued:
            log.warning("subscriber queue full (%d events): closing its watch", len(self._queue))
            self.close("subscriber too slow")
            if self.on_overflow is not None:
                self.on_overflow()
            return
        self._queue.append(event)
        self._wake()

    async def next(self) -> PaymentStatusEvent | None:
        """The next event, in the order the hub received them; None once finished."""
        while not self._queue:
            if self.closed is not None:
                raise WatchClosed(self.closed)
            if self.finished:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def finish(self) -> None:
        """The stream sent its last update itself (through ``direct``): it may end."""
        self.finished = True
        self._wake()

    def close(self, reason: str = "closed") -> None:
        if self.closed is None:
            self.closed = reason
            self._hub._forget(self)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatusHub:
    """Consumes ``payments.status``: cache first, then the subscribers."""

    def __init__(self, settings: Settings, cache: VersionedCache | None) -> None:
        self._settings = settings
        self._cache = cache
        self._by_payment: dict[uuid.UUID, set[Watch]] = {}
        self._by_account: dict[uuid.UUID, set[Watch]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._positions: dict[TopicPartition, int] = {}
        # Set once the consumer knows its starting offsets: from then on no event is skipped.
        self.positioned = asyncio.Event()
        # Builds the updates of a batch of events (set by the subscription service), in the
        # order given: for watches that send their updates themselves, once per event, before
        # they are handed the event. One call per batch: under load an await per event left
        # the stream seconds behind (docs/benchmarks.md, scenario 5).
        self.prepare: Callable[[list[PaymentStatusEvent]], Awaitable[list[object]]] | None = None
        # By record key: events this process publishes with their cache work done (expect).
        self._own: OrderedDict[bytes, Recorded] = OrderedDict()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="status-hub")

    async def close(self) -> None:
        for watch in {w for ws in (*self._by_payment.values(), *self._by_account.values()) for w in ws}:
            watch.close("server shutting down")
        if self._task is not None:
            # Asked to stop first, so that the consumer is stopped cleanly (its connections
            # closed) within a poll; cancelled only past that, and again until it ends: a
            # cancellation that lands as one of aiokafka's wait_for calls completes is
            # swallowed on Python 3.11, and a single cancel then left shutdown waiting for ever.
            self._stopping = True
            await asyncio.wait({self._task}, timeout=3.0)
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=5.0)
            self._task = None

    async def watch(self, *, payments: Iterable[uuid.UUID] = (),
                    accounts: Iterable[uuid.UUID] = ()) -> Watch:
        """Register a watch; the caller reads the current state after this returns."""
        if not self.positioned.is_set():
            try:
                # asyncio.timeout keeps a cancellation that wait_for may lose on 3.11.
                async with asyncio.timeout(self._settings.kafka.produce_timeout_s):
                    await self.positioned.wait()
            except TimeoutError:
                raise Unavailable("the status stream is unavailable; retry shortly") from None
        watch = Watch(self, payments, accounts, self._settings.subscriptions.max_queued_events)
        for payment_id in watch.payments:
            self._by_payment.setdefault(payment_id, set()).add(watch)
        for account_id in watch.accounts:
            self._by_account.setdefault(account_id, set()).add(watch)
        subscription_opened()
        return watch

    def expect(self, published: Iterable[tuple[bytes, Recorded]]) -> None:
        """Events about to be published (with their record keys) whose cache entries and page
        bumps this process has written: when they come back, the hub does not write them
        again. Called before they are handed to the producer."""
        own = self._own
        for key, recorded in published:
            own[key] = recorded
        while len(own) > OWN_EVENTS_KEPT:
            own.popitem(last=False)

    def _forget(self, watch: Watch) -> None:
        for index, keys in ((self._by_payment, watch.payments), (self._by_account, watch.accounts)):
            for key in keys:
                watchers = index.get(key)
                if watchers is not None:
                    watchers.discard(watch)
                    if not watchers:
                        del index[key]
        subscription_closed()

    async def _run(self) -> None:
        # One consumer session per attempt; whatever ends a session (a lost broker, a bug) is
        # retried under the fault policy and resumes where the last one stopped.
        # The wait is capped low: subscribers are waiting on this stream.
        await until_done("status stream", self._session, initial_s=0.5, max_s=2.0)

    async def _session(self) -> None:
        consumer = make_consumer(self._settings.kafka, group_id=None,
                                 auto_offset_reset="latest",
                                 max_poll_records=self._settings.subscriptions.stream_batch_size)
        try:
            await consumer.start()
            await self._position(consumer)
            while not self._stopping:
                batches = await consumer.getmany(timeout_ms=1000)
                events, written = self.take(r for records in batches.values() for r in records)
                if events:
                    await self.apply(events, written=written)
                await self._measure_lag(consumer)
                if self._cache is not None:
                    await self._cache.flush_unwritten()
        finally:
            self.positioned.clear()
            await consumer.stop()

    async def _position(self, consumer: AIOKafkaConsumer) -> None:
        """Every partition, from where this hub left off (after a reconnect: nothing in
        between is skipped), else from the end as of now; pinned before watches are served."""
        topic = self._settings.kafka.status_topic
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await asyncio.sleep(0.5)  # the topic is not created yet
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])
            else:
                await consumer.seek_to_end(tp)
            self._positions[tp] = await consumer.position(tp)
        self.positioned.set()

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            # Where to resume after a reconnect, as well as the lag.
            self._positions[tp] = position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                CONSUMER_LAG.labels("api-status-stream", tp.topic, str(tp.partition)).set(
                    max(0, highwater - position))

    def take(self, records: Iterable[Any]) -> tuple[list[PaymentStatusEvent], set[int]]:
        """The records' events, and the places among them of this process's own (their cache
        work done); an own event no watch wants is left out, undecoded."""
        events: list[PaymentStatusEvent] = []
        written: set[int] = set()
        own = self._own
        for record in records:
            recorded = own.get(record.key) if own else None
            if recorded is not None and recorded.raw == record.value:
                del own[record.key]
                if self._wanted(recorded.written):
                    written.add(len(events))
                    events.append(recorded.traced(carrier_of_headers(record.headers)))
                continue
            event = _decoded(record)
            if event is not None:
                events.append(event)
        return events, written

    def _wanted(self, event: PaymentStatusEvent) -> bool:
        if event.payment_id in self._by_payment:
            return True
        by_account = self._by_account
        return any(account in by_account for account in event.account_ids)

    async def apply(self, events: list[PaymentStatusEvent], *,
                    written: Collection[int] = ()) -> None:
        """Update the cache from the events (versioned, so replays and other processes' writes
        of the same event are harmless), then hand them to the subscribers. The events at the
        places in ``written`` have had their cache work done by this process: only handed on.

        Each event is checked on its own first: one that cannot be applied (a malformed
        snapshot, say) is logged, counted in ``paystream_status_events_dropped_total`` and
        skipped, and the rest of the batch goes on. Raising instead would end the session,
        which resumes at the same batch: one bad event would stop the stream for good."""
        good: list[PaymentStatusEvent] = []
        # The newest version of each entity in the batch, whatever the order: an API's
        # PENDING event can land after the worker's terminal one for the same payment.
        payments: dict[uuid.UUID, Entry] = {}
        accounts: dict[uuid.UUID, Entry] = {}
        bumped: set[uuid.UUID] = set()
        for i, event in enumerate(events):
            if i in written:
                good.append(event)
                continue
            try:
                entries = _cache_entries(event)
            except Exception:  # whatever is wrong with it, it is this event's alone
                log.exception("status event for payment %s skipped: cannot be applied",
                              event.payment_id)
                STATUS_EVENTS_DROPPED.inc()
                continue
            good.append(event)
            payment, event_accounts = entries
            if payment is not None:
                _keep_newest(payments, event.payment_id, *payment)
            for account_id, (version, account) in event_accounts.items():
                _keep_newest(accounts, account_id, version, account)
            bumped.update(event.account_ids)
        if self._cache is not None:
            redis = self._settings.redis
            await self._cache.put_many(PAYMENT, payments, redis.payment_ttl_s)
            await self._cache.put_many(ACCOUNT, accounts, redis.account_ttl_s)
            # The accepting API process tells the pages cache of each new payment; if it died
            # before it could, the payment's next event (the worker's, from the outbox) is
            # the first word of it here. Any event may be that one, so each one counts.
            await self._cache.bump_pages(bumped, redis.page_ttl_s)
        watching = [self._watchers(event) for event in good]
        # Traced, each event's trace goes on through this process to its subscribers: a span
        # per event, their updates built in them, in one batch span.
        with processing_batch(self._settings.kafka.status_topic,
                              {i: event.trace for i, event in enumerate(good)},
                              batch="status stream batch", attributes=lambda i: {
                                  "paystream.payment_id": str(good[i].payment_id),
                                  "paystream.payment.version": good[i].version,
                                  "paystream.subscribers": len(watching[i])},
                              ) as traces:
            traced = [event if traces[i] is event.trace else replace(event, trace=traces[i])
                      for i, event in enumerate(good)]
            updates: dict[int, object] = {}
            direct = [i for i, watchers in enumerate(watching)
                      if any(w.direct is not None for w in watchers)]
            if self.prepare is not None and direct:
                built = await self._prepared(self.prepare, [traced[i] for i in direct])
                updates = dict(zip(direct, built, strict=True))
                watching = [self._watchers(event) for event in good]  # as they are after the wait
            for i, event in enumerate(traced):
                ordered: Iterable[Watch] = _by_group(watching[i]) if i in updates else watching[i]
                update = updates.get(i)
                for watch in ordered:
                    watch.push(event, update)

    def _watchers(self, event: PaymentStatusEvent) -> set[Watch]:
        watchers = set(self._by_payment.get(event.payment_id, ()))
        for account_id in event.account_ids:
            watchers.update(self._by_account.get(account_id, ()))
        return watchers

    async def _prepared(self, prepare: Callable[[list[PaymentStatusEvent]], Awaitable[list[object]]],
                        events: list[PaymentStatusEvent]) -> list[object]:
        """The events' updates, or Nones when they cannot be built now: each subscriber's own
        stream then builds its update (and reports a failure to its subscriber)."""
        try:
            return await prepare(events)
        except Exception:
            log.warning("updates of %d events not built for the subscribers; each builds "
                        "its own", len(events), exc_info=True)
            return [None] * len(events)


def _by_group(watchers: Iterable[Watch]) -> list[Watch]:
    groups: dict[int, list[Watch]] = {}
    for watch in watchers:
        groups.setdefault(id(watch) if watch.group is None else id(watch.group), []).append(watch)
    return [watch for group in groups.values() for watch in group]


def _cache_entries(event: PaymentStatusEvent) -> tuple[
        Entry | None, dict[uuid.UUID, Entry]]:
    """The event's snapshots as cache entries (decoding checked them)."""
    return payment_entry(event.payment), {a.id: account_entry(a) for a in event.accounts or ()}


def _keep_newest(entries: dict[uuid.UUID, Entry], key: uuid.UUID,
                 version: int, payload: Payload) -> None:
    if key not in entries or entries[key][0] < version:
        entries[key] = (version, payload)


def _decoded(record: Any) -> PaymentStatusEvent | None:
    try:
        return status_event_of(record)
    except UndecodableMessage as exc:
        # Counted with the events that cannot be applied: either way, one bad event.
        log.warning("status event skipped: undecodable: %s", exc)
        STATUS_EVENTS_DROPPED.inc()
        return None
