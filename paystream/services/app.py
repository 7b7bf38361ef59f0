"""The long-lived services of one API process, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
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
    producer: LazyProducer
    payments: PaymentService

    @classmethod
    def create(cls, settings: Settings) -> Services:
        db = Database(settings.db)
        reader = Reader(db)
        producer = LazyProducer(settings)
        return cls(
            settings=settings, db=db, reader=reader, auth=Authenticator(db), producer=producer,
            payments=PaymentService(settings, db, reader, producer),
        )

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self.producer.close()
        await self.db.dispose()
