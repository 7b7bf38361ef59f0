"""The delivery schedule of webhooks (``webhook_events``, migration 0008): rows scheduled by
the senders' consumers, claimed by their delivery loops, settled with the attempt log.

The schedule is claimed with ``FOR UPDATE SKIP LOCKED`` and a lease (``next_attempt_at``
moved past the attempt), so any number of senders share it, a sender that dies mid-attempt
leaves the row due again when the lease ends, and no transaction stays open during an HTTP
request. A row waits while an earlier version of the same payment for the same endpoint is
still PENDING: events of one payment reach an endpoint in version order.

A DISABLED endpoint's rows are held, not given up: PENDING with ``next_attempt_at`` at
infinity (out of the due index's range, so claims never scan them), and its new events are
scheduled the same way; ``db.webhooks.enable_endpoint`` makes them due again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from ..tracing import Carrier
from .engine import ReadSession, WriteSession
from .outbox import trace_from_json, trace_json


@dataclass(frozen=True, slots=True)
class ScheduledEvent:
    """One event for one endpoint, its body already rendered for the endpoint's partner."""

    event_id: uuid.UUID
    endpoint_id: uuid.UUID
    payment_id: uuid.UUID
    version: int
    type: str
    body: str
    trace: Carrier | None = None  # the status event's trace, continued by each attempt


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A due row, leased to this sender for one attempt, with what the attempt needs."""

    id: int
    event_id: uuid.UUID
    endpoint_id: uuid.UUID
    payment_id: uuid.UUID
    version: int
    type: str
    body: str
    attempt: int
    url: str
    secret_ciphertext: bytes
    previous_secret_ciphertext: bytes | None
    previous_secret_expires_at: datetime | None
    trace: Carrier | None = None


async def schedule(session: WriteSession, events: Sequence[ScheduledEvent]) -> int:
    """Insert the rows, due now (held for a DISABLED endpoint). An event already scheduled for
    its endpoint (a redelivered status event) is skipped, and so is one older than a version
    of the same payment already scheduled there (the API's PENDING event can arrive after the
    worker's SUCCEEDED one): an endpoint never gets a payment's versions out of order."""
    if not events:
        return 0
    # KEY SHARE until commit: an enabling or a deletion (FOR UPDATE) waits for these rows, and
    # a disabling waits for them before it holds the endpoint's rows (record_attempts), so no
    # row is left held on an ENABLED endpoint or due on a DISABLED one. Deliveries settling
    # meanwhile (plain UPDATEs of the endpoint) do not wait.
    locked = await session.execute(text(
        "SELECT id, status FROM webhook_endpoints WHERE id = ANY(CAST(:ids AS uuid[]))"
        " ORDER BY id FOR KEY SHARE"), {"ids": sorted({e.endpoint_id for e in events})})
    status = {row[0]: str(row[1]) for row in locked}
    events = [e for e in events if e.endpoint_id in status]  # not deleted meanwhile
    if not events:
        return 0
    result = await session.execute(text(
        "INSERT INTO webhook_events (event_id, endpoint_id, payment_id, version, type, body,"
        "                            next_attempt_at, trace)"
        " SELECT r.event_id, r.endpoint_id, r.payment_id, r.version, r.type, r.body,"
        "        CASE WHEN r.held THEN 'infinity'::timestamptz ELSE now() END,"
        "        CAST(r.trace AS jsonb)"
        " FROM unnest(CAST(:event_ids AS uuid[]), CAST(:endpoint_ids AS uuid[]),"
        "             CAST(:payment_ids AS uuid[]), CAST(:versions AS integer[]),"
        "             CAST(:types AS text[]), CAST(:bodies AS text[]), CAST(:held AS boolean[]),"
        "             CAST(:traces AS text[]))"
        "      AS r(event_id, endpoint_id, payment_id, version, type, body, held, trace)"
        " WHERE NOT EXISTS (SELECT 1 FROM webhook_events e WHERE e.endpoint_id = r.endpoint_id"
        "                   AND e.payment_id = r.payment_id AND e.version > r.version)"
        " ON CONFLICT (endpoint_id, event_id) DO NOTHING"),
        {"event_ids": [e.event_id for e in events],
         "endpoint_ids": [e.endpoint_id for e in events],
         "payment_ids": [e.payment_id for e in events], "versions": [e.version for e in events],
         "types": [e.type for e in events], "bodies": [e.body for e in events],
         "held": [status[e.endpoint_id] == "DISABLED" for e in events],
         "traces": [trace_json(e.trace) for e in events]})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]  # a CursorResult; typed as Result


# The due rows in order (up to :scan of them, read without locks), numbered per endpoint, so
# that no endpoint is given more than its room (max_in_flight_per_endpoint less its attempts
# already in flight in this sender); those are locked, skipping rows another sender holds, and
# the due condition is checked again on the locked row (a row another sender claimed and
# committed meanwhile is no longer due).
_CLAIM = text("""
WITH candidates AS (
    SELECT e.id, e.endpoint_id, e.next_attempt_at FROM webhook_events e
    JOIN webhook_endpoints ep ON ep.id = e.endpoint_id
    WHERE e.state = 'PENDING' AND e.next_attempt_at <= now() AND ep.status = 'ENABLED'
      AND NOT EXISTS (SELECT 1 FROM webhook_events p
                      WHERE p.endpoint_id = e.endpoint_id AND p.payment_id = e.payment_id
                        AND p.version < e.version AND p.state = 'PENDING')
    ORDER BY e.next_attempt_at, e.id
    LIMIT :scan
), ranked AS (
    SELECT c.id, c.next_attempt_at, coalesce(r.room, :per_endpoint) AS room,
           row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.id) AS n
    FROM candidates c
    LEFT JOIN unnest(CAST(:endpoints AS uuid[]), CAST(:rooms AS integer[])) AS r(endpoint_id, room)
           ON r.endpoint_id = c.endpoint_id
), due AS (
    SELECT e.id FROM webhook_events e JOIN ranked r ON r.id = e.id
    WHERE r.n <= r.room AND e.state = 'PENDING' AND e.next_attempt_at <= now()
    ORDER BY r.next_attempt_at, r.id
    LIMIT :limit
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE webhook_events e
SET next_attempt_at = now() + make_interval(secs => :lease), attempts = e.attempts + 1
FROM due, webhook_endpoints ep
WHERE e.id = due.id AND ep.id = e.endpoint_id
RETURNING e.id, e.event_id, e.endpoint_id, e.payment_id, e.version, e.type, e.body,
          e.attempts AS attempt, ep.url, ep.secret_ciphertext, ep.previous_secret_ciphertext,
          ep.previous_secret_expires_at, e.trace::text AS trace
""")


async def claim_due(session: WriteSession, *, limit: int, lease_s: float, per_endpoint: int,
                    in_flight: Mapping[uuid.UUID, int]) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due rows for one attempt each, at most ``per_endpoint`` less its
    ``in_flight`` attempts for any endpoint."""
    endpoints = sorted(in_flight)
    result = await session.execute(_CLAIM, {
        "limit": limit, "scan": max(4 * limit, 100), "lease": lease_s,
        "per_endpoint": per_endpoint, "endpoints": endpoints,
        "rooms": [max(0, per_endpoint - in_flight[e]) for e in endpoints]})
    claimed = []
    for row in result:
        data = dict(row._mapping)
        for name in ("secret_ciphertext", "previous_secret_ciphertext"):
            if data[name] is not None:
                data[name] = bytes(data[name])
        data["trace"] = trace_from_json(data["trace"])
        claimed.append(ClaimedDelivery(**data))
    return sorted(claimed, key=lambda c: (c.payment_id, c.version))


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to, for :func:`record_attempts`."""

    claimed: ClaimedDelivery
    response_status: int | None
    error: str | None
    delivered: bool
    retry_in_s: float  # when not delivered: due again after this long (within the window)


_LOG_ATTEMPTS = text(
    "INSERT INTO webhook_deliveries (webhook_event_id, endpoint_id, event_id, attempt,"
    " response_status, error)"
    " SELECT * FROM unnest(CAST(:rows AS bigint[]), CAST(:endpoints AS uuid[]),"
    "   CAST(:events AS uuid[]), CAST(:attempts AS integer[]), CAST(:statuses AS integer[]),"
    "   CAST(:errors AS text[]))")
_RETRY = text(
    "UPDATE webhook_events e SET"
    " state = CASE WHEN now() >= e.scheduled_at + make_interval(secs => :window)"
    "              THEN 'FAILED' ELSE 'PENDING' END,"
    " finished_at = CASE WHEN now() >= e.scheduled_at + make_interval(secs => :window)"
    "                    THEN now() END,"
    " next_attempt_at = LEAST(now() + make_interval(secs => u.retry),"
    "                         e.scheduled_at + make_interval(secs => :window))"
    " FROM unnest(CAST(:rows AS bigint[]), CAST(:retries AS float8[])) AS u(id, retry)"
    " WHERE e.id = u.id AND e.state = 'PENDING' RETURNING e.id, e.state")
_STREAK = text(
    "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now()),"
    " status = CASE WHEN now() - coalesce(failing_since, now())"
    "                    >= make_interval(secs => :disable) THEN 'DISABLED' ELSE status END,"
    " disabled_at = CASE WHEN status = 'ENABLED' AND now() - coalesce(failing_since, now())"
    "                    >= make_interval(secs => :disable) THEN now() ELSE disabled_at END"
    " WHERE id = ANY(CAST(:endpoints AS uuid[])) RETURNING id, status")


async def _lock_endpoints(session: WriteSession, endpoint_ids: Sequence[uuid.UUID], mode: str,
                          condition: str = "") -> list[uuid.UUID]:
    """Lock the endpoints (those meeting ``condition``) in id order, so that two senders
    settling attempts to the same endpoints never wait for each other in a cycle."""
    result = await session.execute(text(
        f"SELECT id FROM webhook_endpoints WHERE id = ANY(CAST(:ids AS uuid[])){condition}"
        f" ORDER BY id FOR {mode}"), {"ids": sorted(set(endpoint_ids))})
    return [row[0] for row in result]


async def record_attempts(session: WriteSession, results: Sequence[AttemptResult], *,
                          window_s: float, disable_after_s: float) -> list[str]:
    """Log the attempts and settle their rows, all in the caller's transaction: DELIVERED; or
    due again after ``retry_in_s`` (never past the end of its retry window); or FAILED once
    the window has passed. Each endpoint's failure streak ends (a delivery to it in the
    batch), starts or goes on, or, past ``disable_after_s``, disables it, holding what it
    still has PENDING (its failed rows here too: "HELD"). The rows' states in the order
    given; "DELETED" for a row whose endpoint was deleted during the attempt (nothing is
    recorded), "SETTLED" for one another sender settled meanwhile (its lease had ended)."""
    # Locked first: an endpoint deleted meanwhile took its rows with it (and a deletion
    # waits for this transaction), so the log never references a row that is gone.
    present = {row[0] for row in await session.execute(text(
        "SELECT id FROM webhook_events WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id"
        " FOR UPDATE"), {"ids": sorted({r.claimed.id for r in results})})}
    kept = [r for r in results if r.claimed.id in present]
    states: dict[int, str] = {}
    if not kept:
        return ["DELETED" for _ in results]
    await session.execute(_LOG_ATTEMPTS, {
        "rows": [r.claimed.id for r in kept], "endpoints": [r.claimed.endpoint_id for r in kept],
        "events": [r.claimed.event_id for r in kept], "attempts": [r.claimed.attempt for r in kept],
        "statuses": [r.response_status for r in kept],
        "errors": [None if r.error is None else r.error[:500] for r in kept]})
    delivered = [r for r in kept if r.delivered]
    failed = [r for r in kept if not r.delivered]
    working = {r.claimed.endpoint_id for r in delivered}
    if delivered:
        await session.execute(text(
            "UPDATE webhook_events SET state = 'DELIVERED', finished_at = now()"
            " WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'PENDING'"),
            {"ids": [r.claimed.id for r in delivered]})
        states.update((r.claimed.id, "DELIVERED") for r in delivered)
        # The endpoint row only when a streak ends: a row lock and a new row version per
        # delivery would serialize the settling of every delivery to a busy endpoint.
        ended = await _lock_endpoints(session, list(working), "NO KEY UPDATE",
                                      " AND failing_since IS NOT NULL")
        if ended:
            await session.execute(text(
                "UPDATE webhook_endpoints SET failing_since = NULL"
                " WHERE id = ANY(CAST(:ids AS uuid[]))"), {"ids": ended})
    if failed:
        result = await session.execute(_RETRY, {
            "rows": [r.claimed.id for r in failed], "retries": [r.retry_in_s for r in failed],
            "window": window_s})
        states.update((row[0], str(row[1])) for row in result)
        for r in failed:
            states.setdefault(r.claimed.id, "SETTLED")
        # A delivery in the same batch shows the endpoint works: no streak for it.
        failing = await _lock_endpoints(
            session, [r.claimed.endpoint_id for r in failed
                      if r.claimed.endpoint_id not in working], "NO KEY UPDATE")
        disabled: list[uuid.UUID] = []
        if failing:
            result = await session.execute(_STREAK, {"endpoints": failing,
                                                     "disable": disable_after_s})
            disabled = sorted(row[0] for row in result if row[1] == "DISABLED")
        if disabled:
            # A disabled endpoint is sent nothing more until it is enabled: what it still has
            # waiting is held (enable_endpoint makes it due again), not given up. FOR UPDATE
            # first waits for the schedulers that read it ENABLED (schedule), so their rows
            # are held too.
            await _lock_endpoints(session, disabled, "UPDATE")
            await session.execute(text(
                "UPDATE webhook_events SET next_attempt_at = 'infinity'"
                " WHERE endpoint_id = ANY(CAST(:endpoints AS uuid[])) AND state = 'PENDING'"),
                {"endpoints": disabled})
            for r in failed:
                if r.claimed.endpoint_id in disabled and states[r.claimed.id] == "PENDING":
                    states[r.claimed.id] = "HELD"
    return [states.get(r.claimed.id, "DELETED") for r in results]


@dataclass(frozen=True, slots=True)
class ScheduleBacklog:
    """The schedule as the metrics show it (``paystream_webhook_schedule`` and friends)."""

    due: int  # a sender may claim it now (counted up to the cap)
    waiting: int  # PENDING but not claimable now: retry time ahead, leased, or behind a version
    held: int  # its endpoint is DISABLED
    oldest_due_s: float  # how long the longest-due claimable row has waited (0 when none)
    endpoints: dict[str, int]  # by status, every status present


_BACKLOG = text("""
WITH due AS (
    SELECT e.next_attempt_at FROM webhook_events e
    JOIN webhook_endpoints ep ON ep.id = e.endpoint_id
    WHERE e.state = 'PENDING' AND e.next_attempt_at <= now() AND ep.status = 'ENABLED'
      AND NOT EXISTS (SELECT 1 FROM webhook_events p
                      WHERE p.endpoint_id = e.endpoint_id AND p.payment_id = e.payment_id
                        AND p.version < e.version AND p.state = 'PENDING')
    ORDER BY e.next_attempt_at LIMIT :cap
)
SELECT (SELECT count(*) FROM due),
       (SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0) FROM due),
       (SELECT count(*) FROM (SELECT 1 FROM webhook_events WHERE state = 'PENDING'
                              AND next_attempt_at < 'infinity' LIMIT :cap) AS pending),
       (SELECT count(*) FROM (SELECT 1 FROM webhook_events WHERE state = 'PENDING'
                              AND next_attempt_at = 'infinity' LIMIT :cap) AS held)
""")


async def schedule_backlog(session: ReadSession, *, cap: int) -> ScheduleBacklog:
    """One sample of the schedule (on the primary: the senders' own view). Walks the due
    index (PENDING rows only), so it stays cheap however many rows were delivered."""
    due, oldest, pending, held = (await session.execute(_BACKLOG, {"cap": cap})).one()
    counts: dict[str, int] = {str(status): int(n) for status, n in await session.execute(text(
        "SELECT status, count(*) FROM webhook_endpoints GROUP BY status"))}
    endpoints = {status: int(counts.get(status, 0)) for status in ("ENABLED", "DISABLED")}
    return ScheduleBacklog(due=int(due), waiting=max(0, int(pending) - int(due)),
                           held=int(held), oldest_due_s=max(0.0, float(oldest)),
                           endpoints=endpoints)


async def resend(session: WriteSession, event_id: uuid.UUID) -> tuple[int, int]:
    """Schedule the event again for every endpoint it was scheduled for, with a new retry
    window: due now, or held for an endpoint that is DISABLED (sent once it is enabled; its
    row key-share-locked first, as ``schedule`` does). The numbers of endpoints (due now,
    held)."""
    result = await session.execute(text(
        "WITH endpoint AS (SELECT ep.id, ep.status FROM webhook_endpoints ep"
        "   WHERE ep.id IN (SELECT endpoint_id FROM webhook_events WHERE event_id = :event)"
        "   ORDER BY ep.id FOR KEY SHARE)"
        " UPDATE webhook_events e SET state = 'PENDING', scheduled_at = now(), finished_at = NULL,"
        "   next_attempt_at = CASE WHEN endpoint.status = 'ENABLED' THEN now()"
        "                          ELSE 'infinity'::timestamptz END"
        " FROM endpoint WHERE e.event_id = :event AND e.endpoint_id = endpoint.id"
        " RETURNING endpoint.status"), {"event": event_id})
    statuses = [row[0] for row in result]
    due = statuses.count("ENABLED")
    return due, len(statuses) - due


__all__ = [
    "AttemptResult",
    "ClaimedDelivery",
    "ScheduleBacklog",
    "ScheduledEvent",
    "claim_due",
    "record_attempts",
    "resend",
    "schedule",
    "schedule_backlog",
]
