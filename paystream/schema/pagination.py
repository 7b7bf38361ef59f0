"""Cursor pagination: opaque cursors over (created_at, id), newest first. Payments and
accounts have uuid ids; ledger entries bigint ids (``decode_entry_cursor``).

A cursor names the last row a client saw, so rows inserted meanwhile (always newer) never
shift the pages after it.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TypeVar

import strawberry

from ..domain.errors import BadUserInput
from ..domain.validation import parse_timestamp

Key = TypeVar("Key", uuid.UUID, int)
_MAX_BIGINT = (1 << 63) - 1


class Positioned(Protocol):
    """Anything listed newest first: a payment, an account, a ledger entry."""

    @property
    def id(self) -> uuid.UUID | int: ...

    @property
    def created_at(self) -> datetime: ...


def encode_cursor(row: Positioned) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    return _decode(cursor, uuid.UUID)


def _entry_id(raw: str) -> int:
    value = int(raw)
    if not 0 < value <= _MAX_BIGINT or raw != str(value):
        raise ValueError("not an entry id")  # past bigint the driver would fail: INTERNAL
    return value


def decode_entry_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    """A ledger entry's cursor (its id is a bigint)."""
    return _decode(cursor, _entry_id)


def _decode(cursor: str | None, parse_id: Callable[[str], Key]) -> tuple[datetime, Key] | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, _, row_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        # Out of PostgreSQL's range is refused here: it would otherwise fail in the driver,
        # inside the query, as INTERNAL.
        return parse_timestamp(created_at, field="after"), parse_id(row_id)
    except (ValueError, UnicodeDecodeError, BadUserInput):
        # One message for every malformed cursor: cursors are opaque.
        raise BadUserInput("after: not a cursor this API issued", field="after") from None


def page_size(first: int | None, cap: int) -> int:
    size = 20 if first is None else first
    if size < 0:
        raise BadUserInput("first must be 0 or more", field="first")
    # Capped rather than refused: a client asking for more simply gets fewer per page.
    return min(size, cap)


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None
