"""GraphQL object types. They wrap rows read by services; fields that need more data load it
through the request's DataLoaders."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.types.nodes import SelectedField, Selection

from ..db.refunds import RefundRow
from ..domain.entities import AccountRow, PaymentRow
from ..domain.errors import BadUserInput
from ..domain.money import Money
from ..services.auth import READ
from .context import Info
from .enums import PaymentStatus, RefundStatus
from .filters import PaymentFilterInput, entry_range, instant, payment_filter
from .metadata import MetadataEntry, metadata_entries
from .pagination import PageInfo, decode_cursor, decode_entry_cursor, encode_cursor, page_size
from .scalars import Decimal
from .statements import LedgerEntryConnection, empty_entries, entry_connection

if TYPE_CHECKING:
    from .events import Event

__all__ = ["Account", "Payment", "PaymentStatus", "Refund", "RefundStatus"]


@strawberry.type(description="A partner's account. Balance is shown to its owner only.")
class Account:
    row: strawberry.Private[AccountRow]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    def name(self) -> str:
        return self.row.name

    @strawberry.field
    def currency(self) -> str:
        return self.row.currency

    @strawberry.field(description="Null unless the caller owns the account.")
    def balance(self, info: Info) -> Decimal | None:
        caller = info.context.caller
        if caller is None or not caller.owns(self.row.partner_id):
            return None
        # Reachable through createPayment's answer too: a write-only key may not read it.
        caller.require(READ)
        return money_decimal(self.row.balance_minor, self.row.currency)

    @strawberry.field(description="Balance minus open holds; null unless the caller owns the "
                      "account.")
    def available_balance(self, info: Info) -> Decimal | None:
        caller = info.context.caller
        if caller is None or not caller.owns(self.row.partner_id):
            return None
        caller.require(READ)
        return money_decimal(self.row.available_minor, self.row.currency)

    @strawberry.field(description="Newest first; only the payments the caller may see.")
    async def payments(self, info: Info, first: int | None = 20, after: str | None = None,
                       filter: PaymentFilterInput | None = None) -> PaymentConnection:
        return await payment_connection(info, self.row, first, after, filter)

    @strawberry.field(description="The account's ledger entries, newest first, with "
                      "from <= createdAt <= to (both optional). Empty unless the caller owns "
                      "the account.")
    async def entries(
        self, info: Info, first: int | None = 20, after: str | None = None,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
    ) -> LedgerEntryConnection:
        caller = info.context.require_caller()
        if not caller.owns(self.row.partner_id):
            # A counterparty's (or foreign) account: as if it had no entries, like a missing
            # one; a malformed argument is still BAD_USER_INPUT.
            decode_entry_cursor(after)
            entry_range(from_, to)
            return empty_entries()
        caller.require(READ)
        return await entry_connection(info, self.row, first, after, from_, to)

    @strawberry.field(description="The posted balance after the last entry at or before "
                      "`at` (0 before the first); null unless the caller owns the account.")
    async def balance_at(self, info: Info, at: datetime) -> Decimal | None:
        moment = instant(at, "at")
        assert moment is not None
        caller = info.context.caller
        if caller is None or not caller.owns(self.row.partner_id):
            return None
        caller.require(READ)
        minor = await info.context.services.reader.balance_at(self.row, moment)
        return money_decimal(minor, self.row.currency)

    @strawberry.field(description="The owner's key-value pairs, as given to createAccount.")
    def metadata(self) -> list[MetadataEntry]:
        return metadata_entries(self.row.metadata_entries)

    @strawberry.field(description="The account's latest events (`last` of them, at most "
                      "100), oldest first; empty unless the caller owns the account. "
                      "accountActivity with `after` set to the last one's cursor continues from "
                      "there without a gap.")
    async def recent_events(
        self, info: Info, last: int | None = 20,
    ) -> list[Annotated[Event, strawberry.lazy("paystream.schema.events")]]:
        from .events import Event

        services = info.context.services
        if last is not None and last < 0:
            raise BadUserInput("last must be 0 or more", field="last")
        records = await services.events.latest_of_account(
            info.context.require_caller(), self.row,
            limit=page_size(last, services.settings.limits.max_page_size))
        return [Event(record=r) for r in records]


async def payment_connection(info: Info, account: AccountRow, first: int | None,
                             after: str | None, given: PaymentFilterInput | None = None,
                             ) -> PaymentConnection:
    """A page of the account's payments; the caller sees all of an account it owns, and of a
    counterparty's account only the payments with its own accounts."""
    caller = info.context.require_caller()
    caller.require(READ)  # also reached from createPayment's answer
    limit = page_size(first, info.context.services.settings.limits.max_page_size)
    before = decode_cursor(after)
    where = payment_filter(given)
    viewer = None if caller.owns(account.partner_id) else caller.partner_id
    page = await info.context.services.reader.account_page(
        account.id, limit=limit, before=before, viewer=viewer, where=where
    )
    for row in page.rows:
        info.context.loaders.payment.prime(row.id, row)
    # The page's accounts in one batch, when the selection shows them: each payment's
    # sourceAccount and destinationAccount then resolve at once, without an awaitable each
    # (two per payment, graphql-core's task and gather for every one of them).
    accounts = None
    if page.rows and _selects_accounts(info.selected_fields):
        ids = list(dict.fromkeys(a for r in page.rows
                                 for a in (r.source_account_id, r.destination_account_id)))
        loaded = await info.context.loaders.account.load_many(ids)
        accounts = {i: row for i, row in zip(ids, loaded, strict=True) if row is not None}
    edges = [PaymentEdge(cursor=encode_cursor(r), node=Payment(row=r, accounts=accounts))
             for r in page.rows]
    return PaymentConnection(
        edges=edges,
        page_info=PageInfo(has_next_page=page.more,
                           end_cursor=encode_cursor(page.last) if page.last else None),
    )


def _under(selections: Sequence[Selection], name: str) -> list[Selection]:
    """The selections of the fields called ``name`` among ``selections``, through fragments."""
    found: list[Selection] = []
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == name:
                found += selection.selections
        else:
            found += _under(selection.selections, name)
    return found


def _selects_accounts(selected: Sequence[Selection]) -> bool:
    """Whether a payments connection's selection (``info.selected_fields``: the connection
    field itself) asks for any payment's accounts."""
    connection = [s for f in selected if isinstance(f, SelectedField) for s in f.selections]
    nodes = _under(_under(connection, "edges"), "node")
    return bool(_under(nodes, "sourceAccount") or _under(nodes, "destinationAccount"))


def money_decimal(minor: int, currency: str) -> Decimal:
    return Decimal(Money.from_minor(minor, currency).to_decimal())


def parse_id(raw: str) -> uuid.UUID | None:
    """An id from a client; malformed ids are treated as absent, like foreign ones."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


@strawberry.type(description="A transfer between two accounts of the same currency.")
class Payment:
    row: strawberry.Private[PaymentRow]
    # Account states that came with the payment (a status event's snapshots): shown as they
    # were at that change, without a read.
    accounts: strawberry.Private[dict[uuid.UUID, AccountRow] | None] = None
    # Set on a subscription update: results of executing documents on it, shared by its
    # subscribers (schema/sharing.py).
    executions: strawberry.Private[dict[object, object] | None] = None
    # Set on a subscription update: the cursor of the event it came from.
    cursor: strawberry.Private[str | None] = None

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field(description="On subscription updates (and an event's payment): the "
                      "cursor of the event this state came from; pass it as `after` to `events` "
                      "or `accountActivity` to resume after it. Null on queries and mutations, "
                      "and on the current state `paymentStatus` sends first.")
    def event_cursor(self) -> str | None:
        return self.cursor

    @strawberry.field
    def status(self) -> PaymentStatus:
        return PaymentStatus(self.row.status)

    @strawberry.field
    def amount(self) -> Decimal:
        return money_decimal(self.row.amount_minor, self.row.currency)

    @strawberry.field
    def currency(self) -> str:
        return self.row.currency

    # Synchronous resolvers that return an awaitable only when a read is needed (graphql-core
    # awaits whatever a resolver returns): a subscription update carries both accounts, so it
    # executes without a task and one subscriber's result is there for the next at once.
    @strawberry.field
    def source_account(self, info: Info) -> Account:
        return self._account(info, self.row.source_account_id)  # type: ignore[return-value]  # may be an awaitable, see above

    @strawberry.field
    def destination_account(self, info: Info) -> Account:
        return self._account(info, self.row.destination_account_id)  # type: ignore[return-value]  # may be an awaitable, see above

    @strawberry.field
    def reference(self) -> str | None:
        return self.row.reference

    @strawberry.field(description="Why a FAILED payment failed, e.g. INSUFFICIENT_FUNDS.")
    def failure_reason(self) -> str | None:
        return self.row.failure_reason

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at

    @strawberry.field
    def updated_at(self) -> datetime:
        return self.row.updated_at

    @strawberry.field(description="Set once SUCCEEDED: the amount unless partly captured.")
    def captured_amount(self) -> Decimal | None:
        captured = self.row.captured_amount_minor
        return None if captured is None else money_decimal(captured, self.row.currency)

    @strawberry.field(description="While AUTHORIZED: when the system releases the hold.")
    def authorization_expires_at(self) -> datetime | None:
        return self.row.authorization_expires_at if self.row.status == "AUTHORIZED" else None

    @strawberry.field(description="The sum of SUCCEEDED refunds.")
    def amount_refunded(self) -> Decimal:
        return money_decimal(self.row.refunded_minor, self.row.currency)

    @strawberry.field(description="The key-value pairs given to createPayment.")
    def metadata(self) -> list[MetadataEntry]:
        return metadata_entries(self.row.metadata_entries)

    @strawberry.field(description="Oldest first.")
    async def refunds(self, info: Info) -> list[Refund]:
        rows = await info.context.loaders.refunds.load(self.row.id)
        return [Refund(row=r, currency=self.row.currency) for r in rows]

    def _account(self, info: Info, account_id: uuid.UUID) -> Account | Awaitable[Account]:
        known = self.accounts.get(account_id) if self.accounts else None
        return Account(row=known) if known is not None else _load_account(info, account_id)


async def _load_account(info: Info, account_id: uuid.UUID) -> Account:
    row = await info.context.loaders.account.load(account_id)
    if row is None:
        # Accounts are never deleted and payments reference them by foreign key.
        raise LookupError(f"account {account_id} of a payment is missing")
    return Account(row=row)


@strawberry.type
class PaymentEdge:
    cursor: str
    node: Payment


@strawberry.type
class PaymentConnection:
    edges: list[PaymentEdge]
    page_info: PageInfo


@strawberry.type
class AccountEdge:
    cursor: str
    node: Account


@strawberry.type
class AccountConnection:
    edges: list[AccountEdge]
    page_info: PageInfo


async def account_connection(info: Info, first: int | None, after: str | None) -> AccountConnection:
    """A page of the caller's own accounts, newest first."""
    caller = info.context.require_caller()
    limit = page_size(first, info.context.services.settings.limits.max_page_size)
    rows = await info.context.services.accounts.page(caller, limit=limit + 1,
                                                     before=decode_cursor(after))
    page = rows[:limit]
    for row in page:
        info.context.loaders.account.prime(row.id, row)
    edges = [AccountEdge(cursor=encode_cursor(r), node=Account(row=r)) for r in page]
    return AccountConnection(
        edges=edges,
        page_info=PageInfo(has_next_page=len(rows) > limit,
                           end_cursor=edges[-1].cursor if edges else None),
    )


@strawberry.type(description="Money of a SUCCEEDED payment paid back to its source account.")
class Refund:
    row: strawberry.Private[RefundRow]
    currency: strawberry.Private[str]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    async def payment(self, info: Info) -> Payment:
        row = await info.context.loaders.payment.load(self.row.payment_id)
        if row is None:
            raise LookupError(f"payment {self.row.payment_id} of a refund is missing")
        return Payment(row=row)

    @strawberry.field
    def amount(self) -> Decimal:
        return money_decimal(self.row.amount_minor, self.currency)

    @strawberry.field
    def status(self) -> RefundStatus:
        return RefundStatus(self.row.status)

    @strawberry.field
    def reason(self) -> str | None:
        return self.row.reason

    @strawberry.field(description="Why a FAILED refund failed, e.g. INSUFFICIENT_FUNDS.")
    def failure_reason(self) -> str | None:
        return self.row.failure_reason

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at

    @strawberry.field
    def updated_at(self) -> datetime:
        return self.row.updated_at

    @strawberry.field(description="The key-value pairs given to refundPayment.")
    def metadata(self) -> list[MetadataEntry]:
        return metadata_entries(self.row.metadata_entries)
