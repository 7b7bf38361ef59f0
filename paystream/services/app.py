"""The long-lived services of one API process, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from ..cache import VersionedCache
from ..config import Settings
from ..db import Database
from .auth import Authenticator
from .payments import LazyProducer, PaymentService
from .reads import Reader
from .status_hub import StatusHub
from .subscriptions import Subscriptions


@dataclass
class Services:
    settings: Settings
    db: Database
    reader: Reader
    auth: Authenticator
    cache: VersionedCache
    producer: LazyProducer
    payments: PaymentService
    hub: StatusHub
    subscriptions: Subscriptions

    @classmethod
    def create(cls, settings: Settings) -> Services:
        db = Database(settings.db)
        cache = VersionedCache(settings.redis)
        reader = Reader(db, cache, settings)
        producer = LazyProducer(settings)
        hub = StatusHub(settings, cache)
        return cls(
            settings=settings, db=db, reader=reader, auth=Authenticator(db), cache=cache,
            producer=producer,
            payments=PaymentService(settings, db, reader, producer),
            hub=hub, subscriptions=Subscriptions(db, reader, hub),
        )

    async def start(self) -> None:
        """Start the status stream (it connects in the background: the API serves queries
        while the broker is still down)."""
        self.hub.start()

    async def close(self) -> None:
        await self.hub.close()
        await self.producer.close()
        await self.cache.close()
        await self.db.dispose()
