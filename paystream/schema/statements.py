"""Statements: an account's ledger entries as GraphQL ``LedgerEntry`` pages."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from ..db.statements import EntryRow
from ..domain.entities import AccountRow
from ..domain.money import Money
from .context import Info
from .enums import EntryKind
from .filters import entry_range
from .pagination import PageInfo, decode_entry_cursor, encode_cursor, page_size
from .scalars import Decimal

if TYPE_CHECKING:
    from .types import Payment, Refund


def _decimal(minor: int, currency: str) -> Decimal:
    return Decimal(Money.from_minor(minor, currency).to_decimal())


@strawberry.type(description="One entry of an account's ledger: a posting's leg on it.")
class LedgerEntry:
    row: strawberry.Private[EntryRow]
    currency: strawberry.Private[str]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    def kind(self) -> EntryKind:
        return EntryKind(self.row.kind)

    @strawberry.field(description="Signed: negative debits the account.")
    def amount(self) -> Decimal:
        return _decimal(self.row.amount_minor, self.currency)

    @strawberry.field(description="The account's posted balance after this entry.")
    def balance_after(self) -> Decimal:
        return _decimal(self.row.balance_after_minor, self.currency)

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at

    @strawberry.field(description="The payment the entry belongs to (null for a FUNDING).")
    async def payment(self, info: Info) -> Annotated[Payment, strawberry.lazy(".types")] | None:
        from .types import Payment

        if self.row.payment_id is None:
            return None
        row = await info.context.loaders.payment.load(self.row.payment_id)
        return None if row is None else Payment(row=row)

    @strawberry.field(description="The refund of a REFUND entry.")
    async def refund(self, info: Info) -> Annotated[Refund, strawberry.lazy(".types")] | None:
        from .types import Refund

        if self.row.refund_id is None:
            return None
        row = await info.context.loaders.refund.load(self.row.refund_id)
        return None if row is None else Refund(row=row, currency=self.currency)


@strawberry.type
class LedgerEntryEdge:
    cursor: str
    node: LedgerEntry


@strawberry.type
class LedgerEntryConnection:
    edges: list[LedgerEntryEdge]
    page_info: PageInfo


async def entry_connection(info: Info, account: AccountRow, first: int | None, after: str | None,
                           from_: datetime | None, to: datetime | None) -> LedgerEntryConnection:
    """A page of the account's entries, newest first (the caller owns the account)."""
    limit = page_size(first, info.context.services.settings.limits.max_page_size)
    before = decode_entry_cursor(after)
    start, end = entry_range(from_, to)
    rows = await info.context.services.reader.entries_page(
        account, limit=limit + 1, before=before, from_at=start, to_at=end)
    page = rows[:limit]
    edges = [LedgerEntryEdge(cursor=encode_cursor(r), node=LedgerEntry(row=r,
                                                                         currency=account.currency))
             for r in page]
    return LedgerEntryConnection(
        edges=edges,
        page_info=PageInfo(has_next_page=len(rows) > limit,
                           end_cursor=edges[-1].cursor if edges else None),
    )


def empty_entries() -> LedgerEntryConnection:
    return LedgerEntryConnection(edges=[], page_info=PageInfo(has_next_page=False,
                                                              end_cursor=None))
