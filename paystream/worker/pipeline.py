"""The worker's publishing, one step behind its posting.

A posted batch's status events are committed in the outbox; producing them and marking their
rows sent used to come before the next poll, so each batch paid for its produce (acks=all)
and a second commit (the marks) in sequence with its posting. Here a single task publishes
the batches in the order they were posted (a short queue; one payment's events never pass
each other), while the poll loop goes on posting. The rows produced are marked sent by the
next posting's own transaction (one more statement in a commit that happens anyway); when
no posting comes within ``mark_after_s``, the task marks them in a transaction of its own.

Nothing here is needed for delivery: every row is committed before it is queued, so a crash,
a failed produce or a full stop leaves unsent rows that the relay's sweep publishes (once
they are ``relay_min_age_s`` old). Marking late only delays that sweep's view of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..cache import ACCOUNT, PAYMENT, VersionedCache, account_entry, payment_entry
from ..config import Settings
from ..db import Database
from ..db.outbox import Marks
from ..retry import until_done
from .outbox import OutboxRelay
from .posting import BatchResult

log = logging.getLogger("paystream.worker")


class PublishPipeline:
    def __init__(self, settings: Settings, db: Database, cache: VersionedCache,
                 relay: OutboxRelay, *, on_wait: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._db = db
        self._cache = cache
        self._relay = relay
        self._on_wait = on_wait
        kafka = settings.kafka
        self._queue: asyncio.Queue[BatchResult] = asyncio.Queue(kafka.worker_publish_depth)
        self._mark_after_s = kafka.worker_mark_after_ms / 1000
        self.marks = Marks()  # produced, not yet marked sent: the next posting takes them

    async def put(self, result: BatchResult) -> None:
        """Queue a committed batch for publishing; waits while the queue is full (the poll
        loop then runs at the publisher's pace)."""
        if result.events or result.payments or result.accounts:
            await self._queue.put(result)

    async def run(self) -> None:
        """Publish queued batches in order, for ever; marks what no posting took."""
        while True:
            if self.marks:
                try:
                    async with asyncio.timeout(self._mark_after_s):
                        result = await self._queue.get()
                except TimeoutError:
                    await self._mark_own()
                    continue
            else:
                result = await self._queue.get()
            await self._publish(result)

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: publish what is queued and mark what was produced, within
        ``timeout_s``; what is left is the relay's."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self._queue.empty():
                    await self._publish(self._queue.get_nowait())
                await self._mark_own()
        except Exception as exc:  # noqa: BLE001 (committed rows: the relay publishes them)
            log.warning("status events left to the relay at shutdown (%s)", type(exc).__name__)

    async def _publish(self, result: BatchResult) -> None:
        # The cache first: a reader sees the committed state even while replicas lag.
        # Versioned writes, so racing with the API's own cache updates cannot move an entry
        # backwards.
        redis = self._settings.redis
        await self._cache.put_many(PAYMENT, {p.id: payment_entry(p) for p in result.payments},
                                   redis.payment_ttl_s)
        await self._cache.put_many(ACCOUNT, {a.id: account_entry(a) for a in result.accounts},
                                   redis.account_ttl_s)
        if await self._relay.produce(result.events, result.payloads):
            self.marks.add(result.outbox_ids)

    async def _mark_own(self) -> None:
        await until_done("marking outbox rows sent", lambda: self.marks.mark_own(self._db),
                         on_sleep=self._on_wait)
