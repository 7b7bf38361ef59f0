"""The long-lived services of one API process, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..cache import VersionedCache
from ..db import Database
from .auth import Authenticator
from .payments import LazyProducer, PaymentService
from .reads import Reader


@dataclass
class Services:
    settings: Settings
    db: Database
    reader: Reader
    auth: Authenticator
    cache: VersionedCache
    producer: LazyProducer
    payments: PaymentService

    @classmethod
    def create(cls, settings: Settings) -> Services:
        db = Database(settings.db)
        cache = VersionedCache(settings.redis)
        reader = Reader(db, cache, settings)
        producer = LazyProducer(settings)
        return cls(
            settings=settings, db=db, reader=reader, auth=Authenticator(db), cache=cache,
            producer=producer,
            payments=PaymentService(settings, db, reader, producer),
        )

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self.producer.close()
        await self.cache.close()
        await self.db.dispose()
