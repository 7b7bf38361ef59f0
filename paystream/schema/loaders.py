"""DataLoaders, one set per request: every id asked for in one tick becomes one batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from ..db.refunds import RefundRow
from ..domain.entities import AccountRow, PaymentRow
from ..metrics import DATALOADER_BATCH_SIZE
from ..services.reads import Reader


class Loaders:
    """The request's loaders. Create one per request so nothing leaks between callers."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self.account = DataLoader[uuid.UUID, AccountRow | None](load_fn=self._load_accounts)
        self.payment = DataLoader[uuid.UUID, PaymentRow | None](load_fn=self._load_payments)
        self.refunds = DataLoader[uuid.UUID, list[RefundRow]](load_fn=self._load_refunds)
        self.refund = DataLoader[uuid.UUID, RefundRow | None](load_fn=self._load_refund)

    async def _load_accounts(self, ids: Sequence[uuid.UUID]) -> list[AccountRow | None]:
        DATALOADER_BATCH_SIZE.labels("account").observe(len(ids))
        found = await self._reader.accounts(ids)
        return [found.get(i) for i in ids]

    async def _load_payments(self, ids: Sequence[uuid.UUID]) -> list[PaymentRow | None]:
        DATALOADER_BATCH_SIZE.labels("payment").observe(len(ids))
        found = await self._reader.payments(ids)
        return [found.get(i) for i in ids]

    async def _load_refund(self, ids: Sequence[uuid.UUID]) -> list[RefundRow | None]:
        DATALOADER_BATCH_SIZE.labels("refund").observe(len(ids))
        found = await self._reader.refunds_by_ids(ids)
        return [found.get(i) for i in ids]

    async def _load_refunds(self, ids: Sequence[uuid.UUID]) -> list[list[RefundRow]]:
        DATALOADER_BATCH_SIZE.labels("refunds").observe(len(ids))
        found = await self._reader.refunds(ids)
        return [found.get(i, []) for i in ids]
