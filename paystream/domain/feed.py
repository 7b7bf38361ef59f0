"""Cursors of the events feed, without I/O.

A cursor names one event by its place in the feed's order: the id of the transaction that
wrote it (PostgreSQL's 64-bit ``xid8``) and its row id. Opaque to clients, like the API's other
cursors (base64url of ``"<txid>:<id>"``, unpadded); anything else is BAD_USER_INPUT on the
argument that carried it, never an error inside a query.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from .errors import BadUserInput

_MAX_BIGINT = (1 << 63) - 1


@dataclass(frozen=True, slots=True, order=True)
class EventPosition:
    """Where an event sits in the feed: ordered by (txid, id)."""

    txid: int
    id: int


def encode_event_cursor(txid: int, event_id: int) -> str:
    raw = f"{txid}:{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _number(raw: str) -> int:
    value = int(raw)
    # Past bigint the driver would fail inside the query (INTERNAL); "+1", " 1" or "01"
    # are not what this API writes.
    if not 0 < value <= _MAX_BIGINT or raw != str(value):
        raise ValueError("out of range")
    return value


def decode_event_cursor(cursor: str | None, *, field: str = "after") -> EventPosition | None:
    """The position a cursor names (None for no cursor)."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        txid, sep, row_id = base64.urlsafe_b64decode(padded.encode("ascii")).decode().partition(":")
        if not sep:
            raise ValueError("no separator")
        return EventPosition(_number(txid), _number(row_id))
    except (ValueError, UnicodeError, binascii.Error):
        # One message for every malformed cursor: cursors are opaque.
        raise BadUserInput(f"{field}: not an event cursor this API issued", field=field) from None


__all__ = ["EventPosition", "decode_event_cursor", "encode_event_cursor"]
