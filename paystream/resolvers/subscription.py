"""Subscription resolvers: a caller, a service stream, GraphQL types out."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import strawberry

from ..schema.context import Info
from ..schema.loaders import Loaders
from ..schema.sharing import OPERATION_FRAMES, direct_payload
from ..schema.types import Payment
from ..services.subscriptions import PaymentUpdate


def _shared_payment(update: PaymentUpdate) -> Payment:
    # One Payment per update, whoever it is sent to: the executed result is kept on it and
    # shared by subscribers with the same document and audience (schema/sharing.py).
    payment = update.shared.get("payment")
    if payment is None:
        payment = update.shared["payment"] = Payment(row=update.payment,
                                                     accounts=update.accounts, executions={},
                                                     cursor=update.cursor)
    assert isinstance(payment, Payment)
    return payment


def _fresh_loaders(info: Info) -> None:
    # The connection's context lives as long as the socket: fresh loaders per event, so a
    # nested field never shows what an earlier event loaded.
    info.context.loaders = Loaders(info.context.services.reader)


def _payment(info: Info, update: PaymentUpdate) -> Payment:
    _fresh_loaders(info)
    return _shared_payment(update)


def _direct(info: Info) -> Callable[[PaymentUpdate], bool] | None:
    """Sends a live update straight to the subscriber's socket, when its transport can
    (``OPERATION_FRAMES``): the audience's payload, executed and encoded once. False when the
    update must be yielded instead (Strawberry then executes and sends it)."""
    frames = OPERATION_FRAMES.get()
    if frames is None:
        return None

    def send(update: PaymentUpdate) -> bool:
        if not frames.ready():
            return False
        payload = direct_payload(frames, _shared_payment(update), lambda: _fresh_loaders(info))
        if payload is None:
            return False
        frames.write(payload)
        return True

    return send


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The payment's current state, then each change; completes after a terminal "
        "status (SUCCEEDED, FAILED or CANCELED); AUTHORIZED is sent and the stream stays open."
    )
    async def payment_status(self, info: Info, id: strawberry.ID) -> AsyncGenerator[Payment, None]:
        stream = info.context.services.subscriptions.payment_status(
            info.context.require_caller(), id, info.context.drop_connection, _direct(info))
        # Closed with this generator, not whenever it is collected: its watch ends at once.
        async with aclosing(stream):
            async for update in stream:
                yield _payment(info, update)

    @strawberry.subscription(
        description="Every status change of a payment touching an account the caller owns, "
        "each with its eventCursor. With `after` (an event cursor): first every change after "
        "it (up to 30 days back), then the live ones, with no gap and no duplicate between."
    )
    async def account_activity(self, info: Info, account_id: strawberry.ID,
                               after: str | None = None) -> AsyncGenerator[Payment, None]:
        stream = info.context.services.subscriptions.account_activity(
            info.context.require_caller(), account_id, info.context.drop_connection, after,
            _direct(info))
        async with aclosing(stream):
            async for update in stream:
                yield _payment(info, update)
