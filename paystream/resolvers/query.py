"""Query resolvers: parse the arguments, ask the loaders, apply visibility, wrap the result."""

from __future__ import annotations

import strawberry

from ..schema.context import Info
from ..schema.events import EventConnection, event_connection
from ..schema.filters import PaymentFilterInput, payment_filter
from ..schema.pagination import PageInfo, decode_cursor, page_size
from ..schema.types import (
    Account,
    AccountConnection,
    Payment,
    PaymentConnection,
    account_connection,
    parse_id,
    payment_connection,
)
from ..schema.webhooks import WebhookDelivery, WebhookEndpoint
from ..services.auth import READ


@strawberry.type
class Query:
    @strawberry.field(description="An account the caller owns; null when absent or not visible.")
    async def account(self, info: Info, id: strawberry.ID) -> Account | None:
        caller = info.context.require_caller()
        caller.require(READ)
        account_id = parse_id(id)
        if account_id is None:
            return None
        row = await info.context.loaders.account.load(account_id)
        if row is None or not caller.owns(row.partner_id):
            return None
        return Account(row=row)

    @strawberry.field(description="A payment the caller may see; null when absent or not visible.")
    async def payment(self, info: Info, id: strawberry.ID) -> Payment | None:
        caller = info.context.require_caller()
        caller.require(READ)
        payment_id = parse_id(id)
        if payment_id is None:
            return None
        loaders = info.context.loaders
        row = await loaders.payment.load(payment_id)
        if row is None:
            return None
        source, destination = await loaders.account.load_many(
            [row.source_account_id, row.destination_account_id]
        )
        if source is None or destination is None:
            return None
        if not caller.may_see_payment(source.partner_id, destination.partner_id):
            return None
        return Payment(row=row)

    @strawberry.field(description="An account's payments, newest first; empty when the account "
                      "is absent or not the caller's.")
    async def payments(self, info: Info, account_id: strawberry.ID, first: int | None = 20,
                       after: str | None = None,
                       filter: PaymentFilterInput | None = None) -> PaymentConnection:
        caller = info.context.require_caller()
        caller.require(READ)
        account = None
        parsed = parse_id(account_id)
        if parsed is not None:
            account = await info.context.loaders.account.load(parsed)
        if account is None or not caller.owns(account.partner_id):
            decode_cursor(after)  # a bad cursor or filter is still BAD_USER_INPUT
            payment_filter(filter)
            return PaymentConnection(edges=[], page_info=PageInfo(has_next_page=False, end_cursor=None))
        return await payment_connection(info, account, first, after, filter)

    @strawberry.field(description="The caller's accounts, newest first.")
    async def accounts(self, info: Info, first: int | None = 20,
                       after: str | None = None) -> AccountConnection:
        return await account_connection(info, first, after)

    @strawberry.field(description="The caller's webhook endpoints, oldest first.")
    async def webhook_endpoints(self, info: Info) -> list[WebhookEndpoint]:
        rows = await info.context.services.webhooks.endpoints(info.context.require_caller())
        return [WebhookEndpoint(row=r) for r in rows]

    @strawberry.field(description="Attempts to deliver to one of the caller's endpoints, newest "
                      "first; after: the id of the last attempt seen.")
    async def webhook_deliveries(self, info: Info, endpoint_id: strawberry.ID,
                                 first: int | None = 20,
                                 after: str | None = None) -> list[WebhookDelivery]:
        services = info.context.services
        rows = await services.webhooks.deliveries(
            info.context.require_caller(), endpoint_id,
            limit=page_size(first, services.settings.limits.max_page_size), after=after)
        return [WebhookDelivery(row=r) for r in rows]

    @strawberry.field(description="Every event the caller may see (a payment or refund of one "
                      "of its accounts), oldest first, kept 30 days; resume with `after` (a "
                      "cursor from here, an update's eventCursor or a webhook's).")
    async def events(self, info: Info, first: int | None = 20,
                     after: str | None = None) -> EventConnection:
        return await event_connection(info, first, after)
