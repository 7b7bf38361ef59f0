"""The events table: every status event, in the transaction that writes it, for the feed.

:func:`record` is called by every writer of status events (the worker's postings, captures,
cancels, expiries and refunds; the API's PENDING and ``refund.pending`` events) in its own
transaction, before the outbox row: it hands back the events with their feed cursors, so the
published message carries the cursor too.

Reads: :func:`partner_page` (the ``events`` feed) lists only rows whose transaction id is below
the xmin of the current snapshot, so it must run on the primary (a replica's snapshot says
nothing about the primary's running transactions); :func:`account_events` (the replay of a
resumed ``accountActivity``) lists everything committed, since its caller deduplicates
against the live stream instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import text

from ..domain.feed import EventPosition, encode_event_cursor
from ..domain.webhooks import event_type
from ..events.messages import PaymentStatusEvent
from .engine import ReadSession, WriteSession

# The feed's columns are read back from each event's JSON (bound as the one text array, beside
# its type) instead of bound as nine arrays more: binding them was most of a bulk request's
# events insert (docs/benchmarks.md, 2026-12-04). The JSON is the event as published (schema 2), so
# its fields are the event's: tests/integration/test_events_feed.py reads the columns back.
# OFFSET 0 keeps the subquery from being pulled up, which would parse each JSON text once per
# column read from it (four times the server's time for the statement; once, it is 1.2x).
_INSERT = text(
    "INSERT INTO events (created_at, type, payment_id, refund_id, version, source_account_id,"
    " destination_account_id, source_partner_id, destination_partner_id, payload)"
    " SELECT CAST(j #>> '{payment,updated_at}' AS timestamptz), t,"
    "   CAST(j ->> 'payment_id' AS uuid), CAST(j #>> '{refund,id}' AS uuid),"
    "   CAST(j #>> '{payment,version}' AS integer),"
    "   CAST(j #>> '{payment,source_account_id}' AS uuid),"
    "   CAST(j #>> '{payment,destination_account_id}' AS uuid),"
    "   CAST(j ->> 'source_partner_id' AS uuid), CAST(j ->> 'destination_partner_id' AS uuid), j"
    " FROM (SELECT CAST(x AS jsonb) AS j, t"
    "   FROM unnest(CAST(:payloads AS text[]), CAST(:types AS text[])) AS u(x, t) OFFSET 0) AS v"
    " RETURNING payment_id, version, CAST(txid AS text), id"
)
_COLUMNS = "e.id, CAST(e.txid AS text), e.payload::text"
# Each side of the page walks its own index ((partner, txid, id)) from the cursor; the UNION
# drops an event seen from both sides (a transfer between two of the partner's accounts).
_PARTNER_PAGE = text(
    "WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),"
    " picked AS ("
    "  (SELECT e.txid, e.id FROM events e, horizon h WHERE e.source_partner_id = :partner"
    "     AND (e.txid, e.id) > (CAST(CAST(:txid AS text) AS xid8), :id) AND e.txid < h.xmin"
    "     AND e.created_at > now() - make_interval(secs => :keep)"
    "   ORDER BY e.txid, e.id LIMIT :limit)"
    "  UNION"
    "  (SELECT e.txid, e.id FROM events e, horizon h WHERE e.destination_partner_id = :partner"
    "     AND (e.txid, e.id) > (CAST(CAST(:txid AS text) AS xid8), :id) AND e.txid < h.xmin"
    "     AND e.created_at > now() - make_interval(secs => :keep)"
    "   ORDER BY e.txid, e.id LIMIT :limit))"
    f" SELECT {_COLUMNS} FROM picked p JOIN events e ON e.id = p.id"
    " ORDER BY p.txid, p.id LIMIT :limit"
)
# The owner's index on each side, filtered to the account: an account's events are a subset
# of its owner's (see docs/decisions.md on why there is no per-account index).
_ACCOUNT_EVENTS = text(
    "WITH picked AS ("
    "  (SELECT e.txid, e.id FROM events e WHERE e.source_partner_id = :partner"
    "     AND e.source_account_id = :account"
    "     AND (e.txid, e.id) > (CAST(CAST(:txid AS text) AS xid8), :id)"
    "     AND e.created_at > now() - make_interval(secs => :keep)"
    "   ORDER BY e.txid, e.id LIMIT :limit)"
    "  UNION"
    "  (SELECT e.txid, e.id FROM events e WHERE e.destination_partner_id = :partner"
    "     AND e.destination_account_id = :account"
    "     AND (e.txid, e.id) > (CAST(CAST(:txid AS text) AS xid8), :id)"
    "     AND e.created_at > now() - make_interval(secs => :keep)"
    "   ORDER BY e.txid, e.id LIMIT :limit))"
    f" SELECT {_COLUMNS} FROM picked p JOIN events e ON e.id = p.id"
    " ORDER BY p.txid, p.id LIMIT :limit"
)
# The account's latest events below the horizon, newest first (the caller reverses them): a
# resumed accountActivity from the last of them misses nothing (see latest_account_events).
_LATEST_ACCOUNT_EVENTS = text(
    "WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),"
    " picked AS ("
    "  (SELECT e.txid, e.id FROM events e, horizon h WHERE e.source_partner_id = :partner"
    "     AND e.source_account_id = :account AND e.txid < h.xmin"
    "     AND e.created_at > now() - make_interval(secs => :keep)"
    "   ORDER BY e.txid DESC, e.id DESC LIMIT :limit)"
    "  UNION"
    "  (SELECT e.txid, e.id FROM events e, horizon h WHERE e.destination_partner_id = :partner"
    "     AND e.destination_account_id = :account AND e.txid < h.xmin"
    "     AND e.created_at > now() - make_interval(secs => :keep)"
    "   ORDER BY e.txid DESC, e.id DESC LIMIT :limit))"
    f" SELECT {_COLUMNS} FROM picked p JOIN events e ON e.id = p.id"
    " ORDER BY p.txid DESC, p.id DESC LIMIT :limit"
)
_BY_IDS = text(f"SELECT {_COLUMNS} FROM events e WHERE e.id = ANY(CAST(:ids AS bigint[])) ORDER BY e.id")
# The oldest rows first, through events_created_idx (migration 0012): a bounded batch that
# reads only rows past the age (the primary key's order read the whole table when none was).
_PRUNE = text(
    "DELETE FROM events WHERE id IN (SELECT id FROM events"
    "  WHERE created_at < now() - make_interval(secs => :keep) ORDER BY created_at LIMIT :limit)"
)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One row of the feed: its place and the status event as published (with its cursor)."""

    position: EventPosition
    event: PaymentStatusEvent

    @property
    def cursor(self) -> str:
        return encode_event_cursor(self.position.txid, self.position.id)


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event just written: its JSON as published (with its cursor), its row's id and its
    cursor. The event with its cursor is built only when asked for (``event``, ``traced``):
    the API's acceptance sends the bytes alone (a copy of each event was 3% of a bulk
    request's CPU)."""

    written: PaymentStatusEvent
    raw: bytes
    id: int
    cursor: str

    @property
    def event(self) -> PaymentStatusEvent:
        """The event as published, with its cursor."""
        return replace(self.written, cursor=self.cursor)

    def traced(self, trace: dict[str, str] | None) -> PaymentStatusEvent:
        """:attr:`event` carrying ``trace``, in one copy."""
        return replace(self.written, cursor=self.cursor, trace=trace)


def kind_of(event: PaymentStatusEvent) -> str:
    """The event's type name (DESIGN.md 2b): ``payment.<status>`` or ``refund.<status>``."""
    return event_type(event.status, str(event.refund["status"]) if event.refund else None)


async def record(session: WriteSession, events: Sequence[PaymentStatusEvent]
                 ) -> list[PaymentStatusEvent]:
    """Write the events in the caller's transaction; returns them with their cursors, in order."""
    return [r.event for r in await record_encoded(session, events)]


async def record_encoded(session: WriteSession, events: Sequence[PaymentStatusEvent],
                         encoded: Sequence[bytes] | None = None) -> list[Recorded]:
    """:func:`record`, each event beside its JSON with the cursor (as it is published) and
    its row's id: every event is encoded once (unless ``encoded`` has their JSON already,
    without a cursor), for the feed, and its cursor spliced in."""
    if not events:
        return []
    if encoded is None:
        encoded = [e.encode() for e in events]
    rows = await session.execute(_INSERT, {
        "payloads": [raw.decode() for raw in encoded], "types": [kind_of(e) for e in events]})
    # (payment, version) names one event: a payment changes at most once per transaction.
    # asyncpg's UUIDs hash and compare as uuid.UUID does: no string of either is made.
    positions = {(r[0], r[1]): (int(r[2]), r[3]) for r in rows}
    recorded = []
    for event, raw in zip(events, encoded, strict=True):
        txid, row_id = positions[event.payment_id, event.version]
        cursor = encode_event_cursor(txid, row_id)
        recorded.append(Recorded(event, event.encode_with_cursor(raw, cursor), row_id, cursor))
    return recorded


def _records(rows: Sequence[tuple[int, str, str]]) -> list[EventRecord]:
    records = []
    for row_id, txid, payload in rows:
        position = EventPosition(int(txid), int(row_id))
        event = PaymentStatusEvent.decode(payload)
        records.append(EventRecord(position, replace(
            event, cursor=encode_event_cursor(position.txid, position.id))))
    return records


def _params(after: EventPosition | None, limit: int, keep_days: float) -> dict[str, object]:
    return {"txid": str(after.txid if after else 0), "id": after.id if after else 0,
            "limit": limit, "keep": keep_days * 86400}


async def by_ids(session: WriteSession, ids: Sequence[int]) -> list[EventRecord]:
    """The events of these rows (those not pruned yet), in id order: the outbox relay's
    read of what a posting's outbox row names."""
    rows = await session.execute(_BY_IDS, {"ids": list(ids)})
    return _records([(r[0], r[1], r[2]) for r in rows])


async def partner_page(session: ReadSession, partner_id: uuid.UUID, *,
                       after: EventPosition | None, limit: int, keep_days: float
                       ) -> list[EventRecord]:
    """Up to ``limit`` events either account owner of which is ``partner_id``, oldest first,
    after ``after``, of transactions below the snapshot's xmin. On the primary."""
    rows = await session.execute(_PARTNER_PAGE,
                                 {"partner": partner_id, **_params(after, limit, keep_days)})
    return _records([(r[0], r[1], r[2]) for r in rows])


async def account_events(session: ReadSession, account_id: uuid.UUID, owner_id: uuid.UUID, *,
                         after: EventPosition | None, limit: int, keep_days: float
                         ) -> list[EventRecord]:
    """Up to ``limit`` committed events of payments touching ``account_id`` (owned by
    ``owner_id``), oldest first, after ``after``. On the primary (the latest commits)."""
    rows = await session.execute(_ACCOUNT_EVENTS, {
        "partner": owner_id, "account": account_id, **_params(after, limit, keep_days)})
    return _records([(r[0], r[1], r[2]) for r in rows])


async def latest_account_events(session: ReadSession, account_id: uuid.UUID,
                                owner_id: uuid.UUID, *, limit: int, keep_days: float
                                ) -> list[EventRecord]:
    """The last ``limit`` events of the account, oldest first, below the snapshot's xmin (on
    the primary): every event committed later sorts after the last one, so
    ``accountActivity(after: <its cursor>)`` continues from here without a gap."""
    rows = await session.execute(_LATEST_ACCOUNT_EVENTS, {
        "partner": owner_id, "account": account_id, "limit": limit,
        "keep": keep_days * 86400})
    return _records([(r[0], r[1], r[2]) for r in rows])[::-1]


async def prune(session: WriteSession, *, keep_days: float, limit: int) -> int:
    """Delete up to ``limit`` events older than ``keep_days``; returns how many."""
    result = await session.execute(_PRUNE, {"keep": keep_days * 86400, "limit": limit})
    return int(getattr(result, "rowcount", 0) or 0)


__all__ = ["EventRecord", "Recorded", "account_events", "by_ids", "kind_of",
           "latest_account_events", "partner_page", "prune", "record", "record_encoded"]
