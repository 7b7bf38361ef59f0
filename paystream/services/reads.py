"""The read side: batched lookups by id on replica sessions (the cache joins in front later)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from ..db import Database
from ..db.accounts import AccountRow, accounts_by_ids
from ..db.payments import PaymentRow, payments_by_ids


class Reader:
    """Batch reads used by the DataLoaders: one statement per entity type per batch."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def accounts(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, AccountRow]:
        found = await self._db.read(lambda s: accounts_by_ids(s, ids))
        missing = [i for i in ids if i not in found]
        if missing:
            # Created a moment ago and not yet replayed on the replica: ask the primary.
            found.update(await self._db.read(lambda s: accounts_by_ids(s, missing), primary=True))
        return found

    async def payments(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, PaymentRow]:
        found = await self._db.read(lambda s: payments_by_ids(s, ids))
        missing = [i for i in ids if i not in found]
        if missing:
            # Accepted a moment ago: the PENDING row is on the primary before the replica.
            found.update(await self._db.read(lambda s: payments_by_ids(s, missing), primary=True))
        return found
