"""Subscription resolvers: a caller, a service stream, GraphQL types out."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import strawberry

from ..schema.context import Info
from ..schema.loaders import Loaders
from ..schema.sharing import OPERATION_FRAMES, OperationFrames, direct_payload
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


class _DirectSend:
    """Sends a live update straight to the subscriber's socket (``OPERATION_FRAMES``): the
    audience's payload, executed and encoded once. False when the update must be yielded
    instead (Strawberry then executes and sends it)."""

    __slots__ = ("_frames", "_info", "group")

    def __init__(self, info: Info, frames: OperationFrames) -> None:
        self._info, self._frames, self.group = info, frames, frames.group

    def __call__(self, update: PaymentUpdate) -> bool:
        frames = self._frames
        if not frames.ready():
            return False
        payload = direct_payload(frames, _shared_payment(update), self._refresh)
        if payload is None:
            return False
        frames.write(payload)
        return True

    def _refresh(self) -> None:
        _fresh_loaders(self._info)


def _direct(info: Info) -> _DirectSend | None:
    """Direct sending, when the subscription's transport offers it."""
    frames = OPERATION_FRAMES.get()
    return _DirectSend(info, frames) if frames is not None else None


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
