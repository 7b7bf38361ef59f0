"""The long-lived services of one API process, built once at start-up."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from ..cache import VersionedCache
from ..cache.client import BoundedRedis, blocking_client
from ..config import Settings
from ..db import Database
from .accounts import AccountService
from .auth import Authenticator
from .events import EventService
from .lifecycle import LifecycleService
from .payments import PaymentService
from .publisher import LazyProducer, Publisher
from .reads import Reader
from .refunds import RefundService
from .status_hub import StatusHub
from .subscriptions import Subscriptions
from .webhooks import WebhookService


@dataclass
class Services:
    settings: Settings
    db: Database
    reader: Reader
    auth: Authenticator
    cache: VersionedCache
    producer: LazyProducer
    publisher: Publisher
    payments: PaymentService
    accounts: AccountService
    lifecycle: LifecycleService
    refunds: RefundService
    hub: StatusHub
    subscriptions: Subscriptions
    # The rate limiter's own connections (gateway/ratelimit.py says why).
    limiter_redis: BoundedRedis
    webhooks: WebhookService
    events: EventService

    @classmethod
    def create(cls, settings: Settings) -> Services:
        db = Database(settings.db)
        cache = VersionedCache(settings.redis)
        reader = Reader(db, cache, settings)
        producer = LazyProducer(settings)
        publisher = Publisher(settings, db, producer,
                              mark_after_s=settings.api.publisher_mark_after_ms / 1000)
        hub = StatusHub(settings, cache)
        return cls(
            settings=settings, db=db, reader=reader, auth=Authenticator(db, settings.api, settings.db.primary_url), cache=cache,
            producer=producer, publisher=publisher,
            payments=PaymentService(settings, db, reader, publisher, hub),
            accounts=AccountService(db, reader),
            lifecycle=LifecycleService(settings, db, reader, publisher),
            refunds=RefundService(settings, db, reader, publisher),
            hub=hub, subscriptions=Subscriptions(
                db, reader, hub, keep_days=settings.outbox.events_retention_days),
            limiter_redis=blocking_client(settings.redis.url, settings.redis.socket_timeout_s,
                                          settings.limits.redis_connections),
            webhooks=WebhookService(settings, db),
            events=EventService(settings, db),
        )

    _publishing: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _listening: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    async def start(self, *, follow_status: bool = True) -> None:
        """Start the status stream and the publisher (both connect in the background: the
        API serves queries, and accepts payments, while the broker is still down).
        ``follow_status`` False: no status stream, for a process that accepts payments but
        serves no subscription (the bench's harness, which seeds its runs): it would consume
        every status event again, beside the API processes it measures."""
        if follow_status:
            self.hub.start()
        self._publishing = asyncio.create_task(self.publisher.run(), name="publisher")
        self._publishing.add_done_callback(_fatal)
        self._listening = asyncio.create_task(self.auth.run(), name="key-revocations")
        self._listening.add_done_callback(_keys_fatal)

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.remove_done_callback(_keys_fatal)
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        await self.hub.close()
        if self._publishing is not None:
            self._publishing.remove_done_callback(_fatal)
            self.publisher.stop()
            # The batch in hand finishes (bounded by the produce timeout); cancelled past that.
            done, _ = await asyncio.wait({self._publishing}, timeout=10.0)
            if not done:
                self._publishing.cancel()
                await asyncio.gather(self._publishing, return_exceptions=True)
        await self.publisher.drain(timeout_s=2.0)
        await self.producer.close()
        await self.cache.close()
        await self.limiter_redis.aclose()
        await self.db.dispose()


def _fatal(task: asyncio.Task[None]) -> None:
    """The publisher catches every failure of a batch, so its end is a bug. Payments are
    still accepted and the relay publishes them, only later: say so loudly."""
    if not task.cancelled():
        logging.getLogger("paystream.publisher").critical(
            "the publisher stopped (%r): payments wait for the relay", task.exception())


def _keys_fatal(task: asyncio.Task[None]) -> None:
    """The listener reconnects after every failure it knows; its end is a bug. Keys are then
    never kept (each request asks the primary): correct, only slower. Say so loudly."""
    if not task.cancelled() and task.exception() is not None:
        logging.getLogger("paystream.auth").critical(
            "the key revocation listener stopped (%r): every request looks its key up",
            task.exception())
