"""Webhook endpoints and their attempt log (migration 0008); the schedule of deliveries is
``db.webhook_schedule``.

A DISABLED endpoint's rows are held in the schedule, not given up (``next_attempt_at`` at
infinity); :func:`enable_endpoint` makes them due again, in version order.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from .engine import ReadSession, WriteSession


@dataclass(frozen=True, slots=True)
class EndpointRow:
    id: uuid.UUID
    partner_id: uuid.UUID
    url: str
    events: list[str]
    status: str
    secret_ciphertext: bytes
    previous_secret_ciphertext: bytes | None
    previous_secret_expires_at: datetime | None
    failing_since: datetime | None
    disabled_at: datetime | None
    created_at: datetime

@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    event_id: uuid.UUID
    attempt: int
    response_status: int | None
    error: str | None
    at: datetime


_ENDPOINT_COLUMNS = ", ".join(EndpointRow.__dataclass_fields__)


def _endpoint(row: Any) -> EndpointRow:
    data = dict(row._mapping)
    data["events"] = list(data["events"])
    for name in ("secret_ciphertext", "previous_secret_ciphertext"):
        if data[name] is not None:
            data[name] = bytes(data[name])
    return EndpointRow(**data)


async def insert_endpoint(session: WriteSession, *, endpoint_id: uuid.UUID, partner_id: uuid.UUID,
                          url: str, events: Sequence[str], secret_ciphertext: bytes) -> EndpointRow:
    result = await session.execute(text(
        "INSERT INTO webhook_endpoints (id, partner_id, url, events, secret_ciphertext)"
        " VALUES (:id, :partner, :url, CAST(:events AS text[]), :secret)"
        f" RETURNING {_ENDPOINT_COLUMNS}"),
        {"id": endpoint_id, "partner": partner_id, "url": url, "events": list(events),
         "secret": secret_ciphertext})
    return _endpoint(result.one())


async def lock_partner_endpoints(session: WriteSession, partner_id: uuid.UUID) -> int:
    """How many endpoints the partner has, with its partner row locked (so concurrent
    registrations count each other)."""
    await session.execute(text("SELECT 1 FROM partners WHERE id = :p FOR UPDATE"),
                          {"p": partner_id})
    result = await session.execute(
        text("SELECT count(*) FROM webhook_endpoints WHERE partner_id = :p"), {"p": partner_id})
    return int(result.scalar_one())


async def endpoints_of(session: ReadSession | WriteSession,
                       partner_id: uuid.UUID) -> list[EndpointRow]:
    result = await session.execute(text(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE partner_id = :p"
        " ORDER BY created_at, id"), {"p": partner_id})
    return [_endpoint(r) for r in result]


async def endpoint_of(session: ReadSession | WriteSession, partner_id: uuid.UUID,
                      endpoint_id: uuid.UUID) -> EndpointRow | None:
    result = await session.execute(text(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = :id AND partner_id = :p"),
        {"id": endpoint_id, "p": partner_id})
    row = result.one_or_none()
    return None if row is None else _endpoint(row)


async def delete_endpoint(session: WriteSession, partner_id: uuid.UUID | None,
                          endpoint_id: uuid.UUID) -> bool:
    """Delete the endpoint (the partner's, or any when ``partner_id`` is None) with its
    schedule and log."""
    result = await session.execute(text(
        "DELETE FROM webhook_endpoints WHERE id = :id"
        " AND (CAST(:p AS uuid) IS NULL OR partner_id = CAST(:p AS uuid)) RETURNING id"),
        {"id": endpoint_id, "p": partner_id})
    return result.one_or_none() is not None


async def rotate_secret(session: WriteSession, partner_id: uuid.UUID | None,
                        endpoint_id: uuid.UUID, *, secret_ciphertext: bytes,
                        previous_ttl_s: float) -> EndpointRow | None:
    """The new secret signs from now on; the current one becomes the previous, still signing
    for ``previous_ttl_s`` (an older previous is dropped)."""
    result = await session.execute(text(
        "UPDATE webhook_endpoints SET previous_secret_ciphertext = secret_ciphertext,"
        " previous_secret_expires_at = now() + make_interval(secs => :ttl),"
        " secret_ciphertext = :secret"
        " WHERE id = :id AND (CAST(:p AS uuid) IS NULL OR partner_id = CAST(:p AS uuid))"
        f" RETURNING {_ENDPOINT_COLUMNS}"),
        {"id": endpoint_id, "p": partner_id, "secret": secret_ciphertext, "ttl": previous_ttl_s})
    row = result.one_or_none()
    return None if row is None else _endpoint(row)


async def all_endpoints(session: ReadSession) -> list[EndpointRow]:
    result = await session.execute(text(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"))
    return [_endpoint(r) for r in result]


async def endpoints_for(session: WriteSession,
                        partner_ids: Sequence[uuid.UUID]) -> list[EndpointRow]:
    """The partners' endpoints, ENABLED and DISABLED (a disabled one's events are held)."""
    result = await session.execute(text(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints"
        " WHERE partner_id = ANY(CAST(:ps AS uuid[]))"),
        {"ps": sorted(set(partner_ids))})
    return [_endpoint(r) for r in result]


async def enable_endpoint(session: WriteSession, partner_id: uuid.UUID | None,
                          endpoint_id: uuid.UUID) -> tuple[EndpointRow, int] | None:
    """ENABLED again (the partner's endpoint, or any when ``partner_id`` is None), with the
    number of its events made due now: the ones held while it was DISABLED and the ones
    given up during the failure streak that disabled it, each with a new retry window, in
    version order as ever. An endpoint already ENABLED is answered as it is (0). None when
    there is no such endpoint."""
    locked = await session.execute(text(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = :id"
        " AND (CAST(:p AS uuid) IS NULL OR partner_id = CAST(:p AS uuid)) FOR UPDATE"),
        {"id": endpoint_id, "p": partner_id})
    row = locked.one_or_none()
    if row is None:
        return None
    endpoint = _endpoint(row)
    if endpoint.status != "DISABLED":
        return endpoint, 0
    since = endpoint.failing_since or endpoint.disabled_at
    revived = await session.execute(text(
        "UPDATE webhook_events SET state = 'PENDING', next_attempt_at = now(),"
        " scheduled_at = now(), finished_at = NULL WHERE endpoint_id = :endpoint"
        " AND (state = 'PENDING' OR (state = 'FAILED' AND finished_at >= :since))"),
        {"endpoint": endpoint_id, "since": since})
    enabled = await session.execute(text(
        "UPDATE webhook_endpoints SET status = 'ENABLED', failing_since = NULL,"
        f" disabled_at = NULL WHERE id = :id RETURNING {_ENDPOINT_COLUMNS}"), {"id": endpoint_id})
    count = int(revived.rowcount or 0)  # type: ignore[attr-defined]  # a CursorResult; typed as Result
    return _endpoint(enabled.one()), count


async def deliveries_page(session: ReadSession, endpoint_id: uuid.UUID, *, limit: int,
                          before: int | None) -> list[DeliveryRow]:
    """Attempts to the endpoint, newest first, older than the attempt ``before``."""
    result = await session.execute(text(
        "SELECT id, event_id, attempt, response_status, error, at FROM webhook_deliveries"
        " WHERE endpoint_id = :e AND (CAST(:before AS bigint) IS NULL"
        "                             OR id < CAST(:before AS bigint))"
        " ORDER BY id DESC LIMIT :limit"),
        {"e": endpoint_id, "before": before, "limit": limit})
    return [DeliveryRow(**dict(r._mapping)) for r in result]


# Oldest first through webhook_deliveries_at_idx and webhook_events_finished_idx (migration
# 0014): each batch reads only rows past the age. An event still PENDING is never deleted,
# however old (a DISABLED endpoint holds its events until it is enabled again).
_PRUNE_DELIVERIES = text(
    "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries"
    "  WHERE at < now() - make_interval(secs => :keep) ORDER BY at LIMIT :limit)"
)
_PRUNE_EVENTS = text(
    "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events"
    "  WHERE state <> 'PENDING' AND finished_at < now() - make_interval(secs => :keep)"
    "  ORDER BY finished_at LIMIT :limit)"
)


async def prune_finished(session: WriteSession, *, keep_days: float, limit: int) -> int:
    """Delete up to ``limit`` delivery attempts made more than ``keep_days`` ago, then up to
    ``limit`` events that finished (DELIVERED or FAILED) that long ago, with any attempts
    of theirs left; returns how many rows of either."""
    params = {"keep": keep_days * 86400, "limit": limit}
    deliveries = await session.execute(_PRUNE_DELIVERIES, params)
    events = await session.execute(_PRUNE_EVENTS, params)
    return sum(int(getattr(r, "rowcount", 0) or 0) for r in (deliveries, events))


__all__ = [
    "DeliveryRow",
    "EndpointRow",
    "all_endpoints",
    "delete_endpoint",
    "deliveries_page",
    "enable_endpoint",
    "endpoint_of",
    "endpoints_for",
    "endpoints_of",
    "insert_endpoint",
    "lock_partner_endpoints",
    "prune_finished",
    "rotate_secret",
]
