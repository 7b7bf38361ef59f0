"""GraphQL types of the events feed (DESIGN.md section 2b): ``events(first, after)``.

An event shows the payment (and for ``refund.*`` events the refund) as the status event
carried it, through the same ``Payment`` type as queries and subscriptions: a counterparty's
account shows its id, name and currency, never its balance.
"""

from __future__ import annotations

from datetime import datetime

import strawberry

from ..db.events import EventRecord, kind_of
from ..db.refunds import RefundRow
from ..domain.webhooks import event_id
from .context import Info
from .pagination import PageInfo, page_size
from .types import Payment, Refund


@strawberry.type(description="A status change of a payment or a refund, as the caller may see "
                 "it. `id` is the webhook's Paystream-Event-Id.")
class Event:
    record: strawberry.Private[EventRecord]

    @strawberry.field
    def id(self) -> strawberry.ID:
        event = self.record.event
        return strawberry.ID(str(event_id(event.payment_id, event.version)))

    @strawberry.field(description="Pass as `after` to `events` or `accountActivity` to resume "
                      "after this event.")
    def cursor(self) -> str:
        return self.record.cursor

    @strawberry.field(description="payment.pending, payment.authorized, payment.succeeded, "
                      "payment.failed, payment.canceled, refund.succeeded or refund.failed.")
    def type(self) -> str:
        return kind_of(self.record.event)

    @strawberry.field
    def created_at(self) -> datetime:
        return self.record.event.payment.updated_at

    @strawberry.field(description="The payment as it was after this change.")
    def payment(self) -> Payment | None:
        event = self.record.event
        return Payment(row=event.payment, accounts={a.id: a for a in event.accounts or ()} or None,
                       cursor=self.record.cursor)

    @strawberry.field(description="For refund.* events: the refund whose outcome this is.")
    def refund(self) -> Refund | None:
        refund = self.record.event.refund
        if not refund:
            return None
        return Refund(row=RefundRow.from_json(refund), currency=self.record.event.payment.currency)


@strawberry.type
class EventEdge:
    cursor: str
    node: Event


@strawberry.type
class EventConnection:
    edges: list[EventEdge]
    page_info: PageInfo


async def event_connection(info: Info, first: int | None, after: str | None) -> EventConnection:
    """A page of the caller's events, oldest first. ``endCursor`` is where to resume: the
    last edge's cursor, or ``after`` itself when nothing newer is listed yet."""
    services = info.context.services
    limit = page_size(first, services.settings.limits.max_page_size)
    page = await services.events.page(info.context.require_caller(), limit=limit, after=after)
    edges = [EventEdge(cursor=r.cursor, node=Event(record=r)) for r in page.records]
    return EventConnection(edges=edges, page_info=PageInfo(
        has_next_page=page.more, end_cursor=edges[-1].cursor if edges else after))


__all__ = ["Event", "EventConnection", "EventEdge", "event_connection"]
