"""The events feed: every status event a partner may see, oldest first, kept 30 days.

A page is read on the primary: it lists only events of transactions below the xmin of the
primary's current snapshot (``db.events``), so an event that commits later can never sort
before a cursor already handed out, and paging on from any cursor misses nothing. A replica
cannot apply that rule: its snapshot does not know the primary's running transactions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..db import Database, ReadSession
from ..db.events import EventRecord, latest_account_events, partner_page
from ..domain.entities import AccountRow
from ..domain.feed import decode_event_cursor
from .auth import READ, Caller


@dataclass(frozen=True, slots=True)
class EventPage:
    records: list[EventRecord]
    more: bool


class EventService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._keep_days = settings.outbox.events_retention_days
        self._db = db

    async def page(self, caller: Caller, *, limit: int, after: str | None) -> EventPage:
        """Up to ``limit`` events after the cursor ``after`` (from the oldest kept when None)
        whose payment has an account of the caller's on either side."""
        caller.require(READ)
        position = decode_event_cursor(after)
        if limit == 0:
            return EventPage([], False)

        async def read(session: ReadSession) -> list[EventRecord]:
            return await partner_page(session, caller.partner_id, after=position,
                                      limit=limit + 1, keep_days=self._keep_days)

        records = await self._db.read(read, primary=True)
        return EventPage(records[:limit], len(records) > limit)

    async def latest_of_account(self, caller: Caller, account: AccountRow, *,
                                limit: int) -> list[EventRecord]:
        """The account's last ``limit`` events, oldest first; none unless the caller owns it
        (as if it had none, like ``Account.entries``)."""
        caller.require(READ)
        if limit == 0 or not caller.owns(account.partner_id):
            return []

        async def read(session: ReadSession) -> list[EventRecord]:
            return await latest_account_events(session, account.id, account.partner_id,
                                               limit=limit, keep_days=self._keep_days)

        return await self._db.read(read, primary=True)


__all__ = ["EventPage", "EventService"]
