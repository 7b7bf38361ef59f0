"""What the subscription resolvers stream: a payment's states, an account's activity.

``payment_status`` registers with the status hub *before* it reads the current state from the
primary, so an event published in between is queued rather than lost; events at or below the
version already sent are dropped, so each newer status arrives exactly once and in order.
``account_activity`` with a cursor does the same across the past: watch first, then the
account's events after the cursor from the events table, then the live ones, each change once.

Every subscriber an event reaches is given the same :class:`PaymentUpdate` for it (built once,
with at most one read), so work done on it for one subscriber can serve the others: the
GraphQL layer keeps the executed result on it (``schema/sharing.py``).

A stream given ``direct`` (a callable that sends an update to the subscriber itself, below the
GraphQL server's per-subscriber handling) hands it its live updates from the hub's loop while
it is caught up; it yields only what it must send the slow way (its first state, a replay,
updates queued while it was busy, and those ``direct`` refuses). Either way each update is
filtered once, by the same rules, and sent in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..cache.singleflight import joined, shared_task
from ..db import Database, ReadSession
from ..db.accounts import accounts_by_ids
from ..db.events import EventRecord, account_events
from ..db.payments import payments_by_ids
from ..domain.entities import AccountRow, PaymentRow
from ..domain.errors import NotFound, Unavailable
from ..domain.feed import EventPosition, decode_event_cursor
from ..domain.status import is_terminal
from ..domain.validation import parse_uuid
from ..events.messages import PaymentStatusEvent
from ..tracing import span
from .auth import READ, Caller
from .reads import Reader
from .status_hub import StatusHub, Watch, WatchClosed

# Per accountActivity subscriber: the payments whose latest version it was sent.
_REMEMBERED_PAYMENTS = 10_000
# Updates kept for subscribers still draining their queues: a subscriber more than this many
# events behind builds its own (correct, just not shared).
_SHARED_UPDATES = 1_024
# Events read per query while a resumed accountActivity replays the past.
_REPLAY_PAGE = 500


@dataclass(frozen=True, slots=True)
class PaymentUpdate:
    """A payment's state and, when known with it, its two accounts at that moment."""

    payment: PaymentRow
    accounts: dict[uuid.UUID, AccountRow] = field(default_factory=dict)
    # Scratch space shared by every subscriber sent this update (the GraphQL view of it).
    shared: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The cursor of the event this update came from (``Payment.eventCursor``): None for a
    # current state read from the database, and for events published before the feed.
    cursor: str | None = None


class DirectSend(Protocol):
    """Sends a live update to the subscriber itself, below the GraphQL server's handling of
    each subscriber; False when it cannot now (the stream then yields it)."""

    # The subscriber's connection: the subscribers of one are handed an event in a row.
    group: object

    def __call__(self, update: PaymentUpdate) -> bool: ...


class Subscriptions:
    def __init__(self, db: Database, reader: Reader, hub: StatusHub, *,
                 keep_days: float = 30.0) -> None:
        self._db = db
        self._keep_days = keep_days  # the events feed's retention
        self._reader = reader
        self.hub = hub
        self._updates: OrderedDict[tuple[uuid.UUID, int], asyncio.Future[PaymentUpdate]] = (
            OrderedDict())
        # Watches with ``direct`` are handed each live event's update, built here once.
        hub.prepare = self._prepared_updates

    async def payment_status(self, caller: Caller, raw_id: str,
                             on_overflow: Callable[[], None] | None = None,
                             direct: DirectSend | None = None,
                             ) -> AsyncGenerator[PaymentUpdate, None]:
        """The current state, then each newer one; ends after a terminal status (SUCCEEDED,
        FAILED or CANCELED; AUTHORIZED is sent and the stream stays open)."""
        caller.require(READ)
        payment_id = parse_uuid(raw_id)
        if payment_id is None:
            raise NotFound("no such payment")
        with await self.hub.watch(payments=[payment_id]) as watch:
            watch.on_overflow = on_overflow
            current = await self._current(payment_id)
            if current is None or not _visible(caller, current):
                raise NotFound("no such payment")
            yield current
            sent = current.payment.version

            def send(event: PaymentStatusEvent, update: object) -> bool:
                nonlocal sent
                if event.version <= sent:
                    return True  # a replay, or a state the first read already showed
                if not isinstance(update, PaymentUpdate) or direct is None or not direct(update):
                    return False
                sent = event.version
                if is_terminal(update.payment.status):
                    watch.finish()
                return True

            if direct is not None:
                watch.direct, watch.group = send, direct.group
            while not is_terminal(current.payment.status):
                event = await _next(watch)
                if event is None:
                    return  # the terminal status went out through ``direct``
                if event.version <= sent:
                    continue
                current = await self._traced_update("paymentStatus", event)
                sent = current.payment.version
                yield current

    async def account_activity(self, caller: Caller, raw_id: str,
                               on_overflow: Callable[[], None] | None = None,
                               after: str | None = None,
                               direct: DirectSend | None = None,
                               ) -> AsyncGenerator[PaymentUpdate, None]:
        """Every status change of a payment touching an account the caller owns.

        With ``after`` (an event cursor, from the feed, a webhook or an earlier update's
        ``eventCursor``): first every event of the account after it, from the database, then
        the live ones. The watch is registered before the replay reads, so an event committed
        meanwhile is queued rather than lost; one that is both replayed and live is sent once
        (by payment and version), so the seam has neither a gap nor a duplicate."""
        caller.require(READ)
        position = decode_event_cursor(after)
        account_id = parse_uuid(raw_id)
        account = None
        if account_id is not None:
            account = (await self._reader.accounts([account_id])).get(account_id)
        if account is None or not caller.owns(account.partner_id):
            raise NotFound("no such account")
        sent: OrderedDict[uuid.UUID, int] = OrderedDict()

        def sending(event: PaymentStatusEvent) -> None:
            sent[event.payment_id] = event.version
            sent.move_to_end(event.payment_id)
            if len(sent) > _REMEMBERED_PAYMENTS:
                sent.popitem(last=False)

        def first_time(event: PaymentStatusEvent) -> bool:
            if sent.get(event.payment_id, 0) >= event.version:
                return False
            sending(event)
            return True

        def send(event: PaymentStatusEvent, update: object) -> bool:
            if sent.get(event.payment_id, 0) >= event.version:
                return True
            if not isinstance(update, PaymentUpdate) or direct is None or not direct(update):
                return False
            sending(event)
            return True

        with await self.hub.watch(accounts=[account.id]) as watch:
            watch.on_overflow = on_overflow
            if position is not None:
                async for event in self._replay(account.id, account.partner_id, position):
                    if first_time(event):
                        # Built for this subscriber alone: replays are not shared.
                        yield await self._update(event)
            if direct is not None:
                watch.direct, watch.group = send, direct.group
            while (live := await _next(watch)) is not None:
                if first_time(live):
                    yield await self._traced_update("accountActivity", live)

    async def _replay(self, account_id: uuid.UUID, owner_id: uuid.UUID,
                      position: EventPosition) -> AsyncGenerator[PaymentStatusEvent, None]:
        """The account's committed events after ``position``, oldest first, a page at a time
        from the primary (it has the latest commits; the live stream covers anything later)."""
        while True:
            async def read(session: ReadSession, after: EventPosition = position
                           ) -> list[EventRecord]:
                return await account_events(session, account_id, owner_id, after=after,
                                            limit=_REPLAY_PAGE, keep_days=self._keep_days)

            records = await self._db.read(read, primary=True)
            for record in records:
                yield record.event
            if len(records) < _REPLAY_PAGE:
                return
            position = records[-1].position

    async def _traced_update(self, subscription: str, event: PaymentStatusEvent
                             ) -> PaymentUpdate:
        """:meth:`_shared_update`, in a span continuing the event's trace (the change as it
        reaches this subscriber; the span ends when the update is ready to send)."""
        with _update_span(f"{subscription} update", event):
            return await self._shared_update(event)

    async def _prepared_updates(self, events: list[PaymentStatusEvent]) -> list[object]:
        """The updates of a batch of events, for the hub to hand to every direct subscriber:
        built once for them all and shared with the streams that build their own
        (:meth:`_shared_update`), with one read for the accounts of all the API's PENDING
        events among them. Each in a span continuing its event's trace (``subscription
        update``); None for one a stream is still building (that stream sends it)."""
        missing = {a for event in events if not event.accounts
                   and (event.payment_id, event.version) not in self._updates
                   for a in event.account_ids}
        found = await self._reader.accounts(list(missing)) if missing else {}
        updates: list[object] = []
        for event in events:
            with _update_span("subscription update", event):
                key = (event.payment_id, event.version)
                shared = self._updates.get(key)
                if shared is not None:
                    outcome = joined(shared)
                    updates.append(None if isinstance(outcome, asyncio.Future) else outcome)
                    continue
                update = _update_of(event, found)
                ready: asyncio.Future[PaymentUpdate] = asyncio.get_running_loop().create_future()
                ready.set_result(update)
                self._updates[key] = ready
                self._trim()
                updates.append(update)
        return updates

    async def _shared_update(self, event: PaymentStatusEvent) -> PaymentUpdate:
        """The update for ``event``, built once for all the subscribers it reaches."""
        key = (event.payment_id, event.version)
        update = self._updates.get(key)
        if update is None:
            update = shared_task(self._updates, key,
                                 self._update(event))
            self._trim()
        outcome = joined(update)
        return await outcome if isinstance(outcome, asyncio.Future) else outcome

    def _trim(self) -> None:
        while len(self._updates) > _SHARED_UPDATES:
            self._updates.popitem(last=False)

    async def _update(self, event: PaymentStatusEvent) -> PaymentUpdate:
        # The API's PENDING event has no accounts (they did not change): the cache has them.
        found = {} if event.accounts else await self._reader.accounts(list(event.account_ids))
        return _update_of(event, found)

    async def _current(self, payment_id: uuid.UUID) -> PaymentUpdate | None:
        """From the primary: a replica may not have the latest state, and the event that
        changed it may have passed before this subscriber registered."""

        async def read(session: ReadSession) -> PaymentUpdate | None:
            payment = (await payments_by_ids(session, [payment_id])).get(payment_id)
            if payment is None:
                return None
            accounts = await accounts_by_ids(
                session, [payment.source_account_id, payment.destination_account_id])
            return PaymentUpdate(payment, accounts)

        return await self._db.read(read, primary=True)


def _update_of(event: PaymentStatusEvent, found: dict[uuid.UUID, AccountRow]) -> PaymentUpdate:
    """The event's update: with its accounts, or (the API's PENDING event has none) with
    those of ``found``."""
    accounts = list(event.accounts or ()) or [found[a] for a in event.account_ids if a in found]
    return PaymentUpdate(event.payment, {a.id: a for a in accounts}, cursor=event.cursor)


def _update_span(name: str, event: PaymentStatusEvent) -> AbstractContextManager[object]:
    """A span for building the event's update, continuing the event's trace."""
    return span(name, parent=event.trace, attributes={
        "paystream.payment_id": str(event.payment_id),
        "paystream.payment.version": event.version,
        "paystream.payment.status": event.status})


async def _next(watch: Watch) -> PaymentStatusEvent | None:
    try:
        return await watch.next()
    except WatchClosed as exc:
        # Not "complete": the client should subscribe again (elsewhere, if this process is
        # going away) and will get the current state first.
        raise Unavailable(f"subscription ended ({exc}); subscribe again") from None


def _visible(caller: Caller, update: PaymentUpdate) -> bool:
    source = update.accounts.get(update.payment.source_account_id)
    destination = update.accounts.get(update.payment.destination_account_id)
    return (source is not None and destination is not None
            and caller.may_see_payment(source.partner_id, destination.partner_id))
