"""The outbox: messages committed with the change they announce, produced after the commit.

Two kinds of rows share the table: the API's ``payments.requested`` messages (a request is
accepted when its payment and its message commit together) and the worker's status events.
A row holds one message (``payload``), or names the events feed rows of one posting
(``event_ids``, migration 0011: a status event is stored once, in the feed, and a posting of
500 payments adds one outbox row, not 500). Whoever produces a row marks it sent; the relay
produces whatever is left unsent, in id order (a row's events in theirs). A row keeps the
trace context of whoever wrote it (``trace``, migration 0010; for a row of events, a JSON
array with each event's), which the producer sends on in the message's headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text

from ..tracing import Carrier
from .engine import Database, ReadSession, WriteSession

_INSERT = text(
    "INSERT INTO outbox (topic, key, payload, trace)"
    " VALUES (:topic, :key, CAST(:payload AS jsonb), CAST(:trace AS jsonb)) RETURNING id"
)
# Many rows in one statement, in the order given (ids follow it: one sequence, one insert).
_INSERT_MANY = text(
    "INSERT INTO outbox (topic, key, payload, trace)"
    " SELECT :topic, k, CAST(p AS jsonb), CAST(t AS jsonb) FROM unnest(CAST(:keys AS text[]),"
    "   CAST(:payloads AS text[]), CAST(:traces AS text[])) WITH ORDINALITY AS u(k, p, t, ord)"
    " ORDER BY ord"
    " RETURNING id"
)
_INSERT_EVENTS = text(
    "INSERT INTO outbox (topic, key, event_ids, trace)"
    " VALUES (:topic, '', CAST(:ids AS bigint[]), CAST(:traces AS jsonb)) RETURNING id"
)
_MARK_SENT = text(
    "UPDATE outbox SET sent_at = now() WHERE id = ANY(CAST(:ids AS bigint[])) AND sent_at IS NULL"
)
# SKIP LOCKED: relays in several workers share the backlog instead of all producing it. The
# rows are committed facts, so producing them while their locks are held is safe.
_CLAIM_UNSENT = text(
    "SELECT id, topic, key, payload::text, trace::text, event_ids FROM outbox"
    " WHERE sent_at IS NULL AND created_at < now() - make_interval(secs => :age)"
    " ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
)
# Requests of payments still PENDING are kept whatever their age: `ledger verify` shows that
# each such payment has its request queued. Walks outbox_created_idx (migration 0012) from
# the oldest row: a row is sent after it is created, so one sent before the cutoff was
# created before it, and the walk reads only rows past the age, never the whole table.
_PRUNE = text(
    "DELETE FROM outbox WHERE id IN ("
    "  SELECT o.id FROM outbox o"
    "   WHERE o.created_at < now() - make_interval(secs => :seconds)"
    "     AND o.sent_at IS NOT NULL AND o.sent_at < now() - make_interval(secs => :seconds)"
    "     AND NOT (o.topic = :requested AND EXISTS (SELECT 1 FROM payments p"
    "              WHERE p.id = CAST(o.payload->>'payment_id' AS uuid) AND p.status = 'PENDING'))"
    "     AND NOT (o.topic = :requested AND o.payload->>'type' = 'refund.requested'"
    "              AND EXISTS (SELECT 1 FROM refunds r"
    "              WHERE r.id = CAST(o.payload->>'refund_id' AS uuid) AND r.status = 'PENDING'))"
    "   ORDER BY o.created_at LIMIT :limit)"
)
# Whatever the worker has yet to post: the request (and any capture or cancel queued behind
# it) of a PENDING payment, the capture or cancel of an AUTHORIZED one, a PENDING refund's.
_REQUEUE_PENDING = text(
    "UPDATE outbox o SET sent_at = NULL FROM payments p"
    " WHERE o.topic = :requested AND o.sent_at IS NOT NULL"
    "   AND p.id = CAST(o.payload->>'payment_id' AS uuid)"
    "   AND (p.status = 'PENDING'"
    "        OR (p.status = 'AUTHORIZED' AND o.payload->>'type' IN"
    "            ('payment.capture_requested', 'payment.cancel_requested'))"
    "        OR (o.payload->>'type' = 'refund.requested' AND EXISTS (SELECT 1 FROM refunds r"
    "            WHERE r.id = CAST(o.payload->>'refund_id' AS uuid) AND r.status = 'PENDING')))"
)
# Walks the partial index on unsent rows (outbox_unsent_idx) in id order, so both figures
# cost at most ``cap`` index entries however large the backlog; a row of events counts as
# its events (messages, not rows).
_BACKLOG = text(
    "SELECT coalesce(sum(coalesce(cardinality(event_ids), 1)), 0),"
    " coalesce(extract(epoch FROM now() - min(created_at)), 0)"
    " FROM (SELECT created_at, event_ids FROM outbox WHERE sent_at IS NULL ORDER BY id"
    "       LIMIT :cap) AS unsent"
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message (``payload``, sent with ``trace``), or a posting's events named by their
    feed rows (``event_ids``, each sent with its own of ``traces``)."""

    id: int
    topic: str
    key: str
    payload: str | None
    trace: Carrier | None = None
    event_ids: tuple[int, ...] | None = None
    traces: tuple[Carrier | None, ...] = ()

    @property
    def messages(self) -> int:
        return len(self.event_ids) if self.event_ids is not None else 1


def trace_json(trace: Carrier | None) -> str | None:
    """A trace context as the ``trace`` column's text (NULL when there is none)."""
    return json.dumps(trace) if trace else None


def trace_from_json(raw: str | None) -> Carrier | None:
    return dict(json.loads(raw)) if raw else None


async def add(session: WriteSession, topic: str, key: str, payload: str, *,
              trace: Carrier | None = None) -> int:
    """One row, in the caller's transaction; returns its id. ``trace``: the context the
    message is sent on with."""
    return int((await session.execute(_INSERT, {"topic": topic, "key": key, "payload": payload,
                                                "trace": trace_json(trace)})).scalar_one())


async def add_many(session: WriteSession, topic: str,
                   messages: Sequence[tuple[str, str, Carrier | None]]) -> list[int]:
    """Rows of (key, payload, trace) on one topic, in the caller's transaction, in one
    statement; returns their ids in the order given."""
    if not messages:
        return []
    result = await session.execute(_INSERT_MANY, {
        "topic": topic, "keys": [m[0] for m in messages], "payloads": [m[1] for m in messages],
        "traces": [trace_json(m[2]) for m in messages]})
    # Ids come from one sequence in insertion order; RETURNING's order is not promised, so
    # sort them back.
    return sorted(int(i) for i in result.scalars())


async def add_events(session: WriteSession, topic: str, event_ids: Sequence[int],
                     traces: Sequence[Carrier | None]) -> int:
    """One row naming the feed rows ``event_ids`` (in the caller's transaction), whose events
    are produced to ``topic`` keyed by their payments, each with its trace context from
    ``traces``; returns its id."""
    return int((await session.execute(_INSERT_EVENTS, {
        "topic": topic, "ids": list(event_ids),
        "traces": json.dumps(list(traces)) if any(traces) else None})).scalar_one())


async def mark_sent(session: WriteSession, ids: Sequence[int]) -> None:
    if ids:
        await session.execute(_MARK_SENT, {"ids": list(ids)})


class Marks:
    """Rows produced and not yet marked sent, marked one step behind: by the producer's next
    transaction (:meth:`riding`, one more statement in a commit that happens anyway), or by
    :meth:`mark_own` when none comes. Marking late only delays the relay's view of the rows;
    they are committed facts either way."""

    def __init__(self) -> None:
        self._ids: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._ids)

    def add(self, ids: Iterable[int]) -> None:
        self._ids.extend(ids)

    @asynccontextmanager
    async def riding(self, db: Database) -> AsyncIterator[WriteSession]:
        """A write session that also marks the rows produced so far; they are kept for the
        next one if it does not commit."""
        ids, self._ids = self._ids, []
        try:
            async with db.write_session() as session:
                await mark_sent(session, ids)
                yield session
        except BaseException:
            self._ids = ids + self._ids
            raise

    async def mark_own(self, db: Database) -> None:
        """Mark the rows in a transaction of their own (nothing when there are none); on
        failure they are kept and the error raised."""
        if self._ids:
            async with self.riding(db):
                pass


async def claim_unsent(session: WriteSession, *, min_age_s: float, limit: int) -> list[OutboxRow]:
    """Unsent rows older than ``min_age_s``, oldest first, locked until the caller's
    transaction ends (other relays skip them)."""
    rows = await session.execute(_CLAIM_UNSENT, {"age": min_age_s, "limit": limit})
    claimed = []
    for row_id, topic, key, payload, trace, event_ids in rows:
        if event_ids is None:
            claimed.append(OutboxRow(int(row_id), topic, key, payload, trace_from_json(trace)))
            continue
        traces = json.loads(trace) if trace else [None] * len(event_ids)
        claimed.append(OutboxRow(int(row_id), topic, key, None, event_ids=tuple(event_ids),
                                 traces=tuple(dict(t) if t else None for t in traces)))
    return claimed


async def prune_sent(session: WriteSession, *, retention_days: float, requested_topic: str,
                     limit: int) -> int:
    """Delete up to ``limit`` rows sent more than ``retention_days`` ago; returns how many."""
    result = await session.execute(_PRUNE, {"seconds": retention_days * 86400, "limit": limit,
                                            "requested": requested_topic})
    return int(getattr(result, "rowcount", 0) or 0)


async def backlog(session: ReadSession | WriteSession, *, cap: int) -> tuple[int, float]:
    """(unsent rows, counted up to ``cap``; age in seconds of the oldest one, 0 when none)."""
    count, age = (await session.execute(_BACKLOG, {"cap": cap})).one()
    return int(count), float(age)


async def requeue_pending(session: WriteSession, *, requested_topic: str) -> int:
    """Mark the requests not posted yet (payments still PENDING, captures and cancels of
    AUTHORIZED payments, PENDING refunds) unsent again, so the relay produces them
    once more: for a broker that lost its messages (the dev broker keeps them in memory). The
    worker skips whatever it had posted already. Returns how many."""
    result = await session.execute(_REQUEUE_PENDING, {"requested": requested_topic})
    return int(getattr(result, "rowcount", 0) or 0)
