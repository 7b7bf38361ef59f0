"""Acceptance: PENDING payments committed with their requests and events, many per commit.

A createPayment that arrives while ``api.accept_commits`` commits are under way waits for the
next one, which takes every payment that waited meanwhile (up to ``api.accept_batch``): group
commit, as PostgreSQL does for its WAL flushes. An idle process commits a lone payment at
once, so batching costs no latency; under load, one transaction of a few statements carries
many payments instead of one each. createPayments commits its own batch the same way, alone.

Each payment keeps its own answer: created now, or the one its (partner, idempotency key)
already named (the caller then checks the request is the same). Two calls with the same key
in one commit share one slot: the first one's draft is inserted, the second finds it. A
commit that fails because the primary did not answer fails each of its payments with
UNAVAILABLE (nothing of it was recorded); any other failure is retried one payment at a
time, so that one payment the database refuses cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Settings
from ..db import Database, events, outbox
from ..db.payments import IdempotencySlot, insert_pending_many
from ..domain.entities import AccountParty, PaymentRow, encode_payment
from ..domain.errors import Unavailable
from ..events.messages import PaymentStatusEvent, encode_accepted
from ..tracing import Carrier
from .publisher import Outgoing, Publisher
from .reads import Reader
from .status_hub import StatusHub

log = logging.getLogger("paystream.payments")

Stored = tuple[PaymentRow, bool]  # the payment as stored, and whether this commit created it


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated payment to accept, with the owners of its accounts (its PENDING event
    names them)."""

    row: PaymentRow
    source: AccountParty
    destination: AccountParty
    trace: Carrier | None = None  # the accepting operation's trace context

    @property
    def slot(self) -> IdempotencySlot:
        return self.row.partner_id, self.row.idempotency_key


@dataclass(slots=True)
class _Waiting:
    draft: Draft
    outcome: asyncio.Future[Stored]


class Acceptance:
    def __init__(self, settings: Settings, db: Database, reader: Reader,
                 publisher: Publisher, hub: StatusHub | None = None) -> None:
        self._settings = settings
        self._hub = hub
        self._db = db
        self._reader = reader
        self._publisher = publisher
        self._waiting: dict[IdempotencySlot, _Waiting] = {}  # in arrival order
        self._commits: set[asyncio.Task[None]] = set()

    async def accept(self, draft: Draft) -> Stored:
        """Commit the payment with the next group; its stored row and whether this call
        created it."""
        waiting = self._waiting.get(draft.slot)
        first = waiting is None
        if waiting is None:
            waiting = _Waiting(draft, asyncio.get_running_loop().create_future())
            self._waiting[draft.slot] = waiting
            self._start_commits()
        # Shielded: the commit is shared, and one caller leaving must not cancel it for all.
        row, created = await asyncio.shield(waiting.outcome)
        return row, created and first

    async def accept_many(self, drafts: Sequence[Draft]) -> dict[IdempotencySlot, Stored]:
        """Commit these payments (distinct slots) in one transaction of their own."""
        return await self._commit(drafts)

    def _start_commits(self) -> None:
        api = self._settings.api
        while self._waiting and len(self._commits) < api.accept_commits:
            group = []
            for slot in list(self._waiting)[:api.accept_batch]:
                group.append(self._waiting.pop(slot))
            task = asyncio.create_task(self._commit_group(group), name="accept payments")
            self._commits.add(task)
            task.add_done_callback(self._committed)

    def _committed(self, task: asyncio.Task[None]) -> None:
        self._commits.discard(task)
        self._start_commits()

    async def _commit_group(self, group: list[_Waiting]) -> None:
        """Settles every waiter's future; raises nothing (the waiters get the errors)."""
        try:
            stored = await self._commit([w.draft for w in group])
        except asyncio.CancelledError:
            for waiting in group:
                waiting.outcome.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 (handed to each waiter, which answers with it)
            if len(group) > 1 and not isinstance(exc, Unavailable):
                log.warning("a commit of %d payments failed (%s); committing each alone",
                            len(group), type(exc).__name__)
                for waiting in group:
                    await self._commit_group([waiting])
                return
            for waiting in group:
                if not waiting.outcome.done():
                    waiting.outcome.set_exception(exc)
                    waiting.outcome.exception()  # retrieved: a caller that left logs nothing
            return
        for waiting in group:
            if not waiting.outcome.done():
                waiting.outcome.set_result(stored[waiting.draft.slot])

    async def _commit(self, drafts: Sequence[Draft]) -> dict[IdempotencySlot, Stored]:
        kafka = self._settings.kafka
        # In slot order: two transactions sharing keys meet the unique index in one order.
        ordered = sorted(drafts, key=lambda d: (str(d.row.partner_id), d.row.idempotency_key))
        # The rows produced since the last commit are marked sent in this one.
        async with self._publisher.marks.riding(self._db) as session:
            stored = await insert_pending_many(session, [d.row for d in ordered])
            new = [(stored[d.slot][0], d) for d in ordered if stored[d.slot][1]]
            # Each payment encoded once: its cache entry, and inside its request and its
            # PENDING event (spliced around it).
            snapshots = [encode_payment(row) for row, _ in new]
            messages = [encode_accepted(row, snapshot, d.source.partner_id,
                                        d.destination.partner_id)
                        for (row, d), snapshot in zip(new, snapshots, strict=True)]
            payloads = [request for request, _ in messages]
            outbox_ids = await outbox.add_many(session, kafka.requested_topic, [
                (str(row.source_account_id), payload.decode(), d.trace)
                for (row, d), payload in zip(new, payloads, strict=True)])
            # The PENDING events are in the events feed from this commit on (with cursors).
            recorded = await events.record_encoded(session, [
                PaymentStatusEvent.pending(row, d.source.partner_id, d.destination.partner_id)
                for row, d in new], encoded=[event for _, event in messages])
        # Visible to payment(id) at once, whatever the replicas' lag, and listed on the next
        # read of either account's pages (whichever process serves it).
        await self._reader.remember_payments([row for row, _ in new], encoded=snapshots)
        await self._reader.pages_changed(
            a for row, _ in new for a in (row.source_account_id, row.destination_account_id))
        # The PENDING events tell account activity subscribers of the new payments; best
        # effort on the stream (not in the outbox): a watcher starts from the current state
        # anyway, and a resumed accountActivity replays them from the feed.
        outgoing: list[Outgoing] = []
        keys = [str(row.id).encode() for row, _ in new]
        for (row, d), payload, outbox_id, event, key in zip(new, payloads, outbox_ids, recorded,
                                                            keys, strict=True):
            outgoing += [
                Outgoing(kafka.requested_topic, str(row.source_account_id).encode(), payload,
                         outbox_id, d.trace),
                Outgoing(kafka.status_topic, key, event.raw, trace=d.trace),
            ]
        if self._hub is not None:
            # Their cache work is done (above): the hub need not do it again when they return.
            self._hub.expect(zip(keys, recorded, strict=True))
        self._publisher.submit(*outgoing)
        return stored
