"""An account's ledger entries: statement pages, the balance at a time, and the operator's
streamed statement. Each walks ``ledger_entries_statement_idx`` (account_id, created_at DESC,
id DESC, INCLUDE balance_after_minor): a page is one index range, ``balance_at`` one probe."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from .accounts import FAR_FUTURE
from .engine import ReadSession, WriteSession

FAR_PAST = datetime.fromisoformat("0001-01-01T00:00:00+00:00")
_MAX_ENTRY_ID = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One ledger entry of an account; ``amount_minor`` is signed (negative debits it) and
    ``balance_after_minor`` is the account's posted balance after it."""

    id: int
    account_id: uuid.UUID
    posting_id: uuid.UUID
    kind: str
    payment_id: uuid.UUID | None
    amount_minor: int
    balance_after_minor: int
    created_at: datetime

    @property
    def refund_id(self) -> uuid.UUID | None:
        """A REFUND posting's id is its refund's id."""
        return self.posting_id if self.kind == "REFUND" else None


_COLUMNS = ("id, account_id, posting_id, kind, payment_id, amount_minor, balance_after_minor,"
            " created_at")
_PAGE = text(
    f"SELECT {_COLUMNS} FROM ledger_entries"
    " WHERE account_id = :account AND (created_at, id) < (:before_at, :before_id)"
    "   AND created_at >= :from_at"
    " ORDER BY created_at DESC, id DESC LIMIT :limit"
)
_BALANCE_AT = text(
    "SELECT balance_after_minor FROM ledger_entries WHERE account_id = :account"
    " AND created_at <= :at ORDER BY created_at DESC, id DESC LIMIT 1"
)
_VERSION = text("SELECT version FROM accounts WHERE id = :account")
_STREAM = text(
    f"SELECT {_COLUMNS} FROM ledger_entries"
    " WHERE account_id = :account AND created_at >= :from_at AND created_at <= :to_at"
    " ORDER BY created_at, id"
)


async def account_version(session: ReadSession | WriteSession, account_id: uuid.UUID) -> int | None:
    """The account's version as this server has it (None: not replayed here yet)."""
    found = (await session.execute(_VERSION, {"account": account_id})).scalar()
    return None if found is None else int(found)


async def entries_page(
    session: ReadSession | WriteSession, account_id: uuid.UUID, *, limit: int,
    before: tuple[datetime, int] | None, from_at: datetime | None, to_at: datetime | None,
) -> list[EntryRow]:
    """Up to ``limit`` entries, newest first, strictly after the cursor ``before``
    (created_at, id), with ``from_at <= created_at <= to_at`` (either bound optional)."""
    before_at, before_id = before or (FAR_FUTURE, _MAX_ENTRY_ID)
    if to_at is not None:
        # created_at <= to as the scan's start position (see db.payments.account_page).
        before_at, before_id = min((before_at, before_id), (to_at, _MAX_ENTRY_ID))
    rows = await session.execute(_PAGE, {
        "account": account_id, "before_at": before_at, "before_id": before_id,
        "from_at": from_at or FAR_PAST, "limit": limit})
    return [EntryRow(*row) for row in rows]


async def balance_at(session: ReadSession | WriteSession, account_id: uuid.UUID,
                     at: datetime) -> int:
    """The posted balance after the last entry at or before ``at``; 0 before the first."""
    found = (await session.execute(_BALANCE_AT, {"account": account_id, "at": at})).scalar()
    return 0 if found is None else int(found)


async def stream_statement(
    session: ReadSession | WriteSession, account_id: uuid.UUID, *,
    from_at: datetime | None, to_at: datetime | None, chunk: int = 1000,
) -> AsyncIterator[EntryRow]:
    """Every entry in the range, oldest first, through a server-side cursor (``chunk`` rows
    per fetch), so memory stays constant however many there are."""
    result = await session.stream(
        _STREAM.execution_options(yield_per=chunk),
        {"account": account_id, "from_at": from_at or FAR_PAST, "to_at": to_at or FAR_FUTURE})
    async for row in result:
        yield EntryRow(*row)
