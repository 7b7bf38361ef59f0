"""Checks on the scalar inputs of ``createPayment`` other than the amount.

Each refusal is :class:`BadUserInput` naming the GraphQL input field, so a partner can tell
which value to fix.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from uuid import UUID

from paystream.domain.errors import BadUserInput

__all__ = [
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_REFERENCE_LENGTH",
    "parse_account_id",
    "parse_timestamp",
    "validate_idempotency_key",
    "validate_reference",
]

MAX_REFERENCE_LENGTH = 140
MAX_IDEMPOTENCY_KEY_LENGTH = 255

# Only the canonical 8-4-4-4-12 form: uuid.UUID() would also take braces, "urn:uuid:" and
# bare hex, giving one account several spellings in keys, cursors and logs.
_UUID_TEXT = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE
)


# Cc: C0/C1 controls incl. NUL, tab and newline (NUL breaks PostgreSQL text columns);
# Cs: lone surrogates, which cannot be encoded as UTF-8 at all. Both categories are fixed
# ranges (Unicode never adds to Cc), so one regular expression finds them: a tenth of the
# cost of asking unicodedata per character, which showed in a 1,000-input createPayments.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _has_control_character(text: str) -> bool:
    return _CONTROL.search(text) is not None


def validate_idempotency_key(key: str) -> str:
    """Return ``key`` unchanged if it is 1 to 255 characters with no control characters.

    The key is not stripped or normalised: it is the partner's identifier, compared
    exactly, and " a" and "a" are different keys.
    """
    field = "idempotencyKey"
    if not isinstance(key, str) or not key:
        raise BadUserInput("idempotencyKey must not be empty", field=field)
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise BadUserInput(
            f"idempotencyKey must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters",
            field=field,
        )
    if _has_control_character(key):
        raise BadUserInput("idempotencyKey must not contain control characters", field=field)
    return key


def validate_reference(ref: str | None, *, field: str = "reference") -> str | None:
    """Return ``ref`` unchanged if absent or at most 140 characters without control characters.

    Newlines and tabs count as control characters: references show up on statements and
    in one-line logs. ``field`` names the input (a refund's ``reason`` follows the same rule).
    """
    if ref is None:
        return None
    if not isinstance(ref, str):
        raise BadUserInput(f"{field} must be a string", field=field)
    if len(ref) > MAX_REFERENCE_LENGTH:
        raise BadUserInput(
            f"{field} must be at most {MAX_REFERENCE_LENGTH} characters", field=field
        )
    if _has_control_character(ref):
        raise BadUserInput(f"{field} must not contain control characters", field=field)
    return ref


def parse_account_id(raw: str, *, field: str) -> UUID:
    """Parse an account id (a UUID in canonical hyphenated form, any letter case).

    A malformed id is :class:`BadUserInput` on ``field``; a well-formed id that does not
    exist is the caller's business (NOT_FOUND or a FAILED payment).
    """
    # Only a string of a canonical id's length is looked up (and kept): the cache is bounded
    # in entries, and its keys must be too.
    parsed = _account_uuid(raw) if isinstance(raw, str) and len(raw) == 36 else None
    if parsed is None:
        raise BadUserInput(f"{field} is not a valid account id", field=field)
    return parsed


@lru_cache(maxsize=4096)
def _account_uuid(raw: str) -> UUID | None:
    # Kept per process: a bulk request names the same few accounts a thousand times, and
    # each parse is a regular expression and a UUID (both 1% of a bulk request's CPU).
    return UUID(raw) if _UUID_TEXT.fullmatch(raw) is not None else None


def parse_uuid(raw: str) -> UUID | None:
    """An id from a client, or None when malformed (treated like an id that does not exist)."""
    try:
        return UUID(raw)
    except (ValueError, TypeError):
        return None


def parse_timestamp(raw: str, *, field: str) -> datetime:
    """An ISO 8601 timestamp with an offset, as an aware datetime in UTC.

    Refused with :class:`BadUserInput` on ``field``: anything ``datetime.fromisoformat``
    does not read, a timestamp without an offset, and one whose UTC instant lies outside
    PostgreSQL's ``timestamptz`` range (4713 BC to 294276 AD). Python's own range, years 1
    to 9999, lies inside it, so the conversion to UTC (which raises OverflowError past
    either end, as "0001-01-01T00:00:00+14:00" does) is the range check; without it, the
    driver failed on such a value inside the query.
    """
    if not isinstance(raw, str):
        raise BadUserInput(f"{field} must be an ISO 8601 timestamp", field=field)
    try:
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError("no offset")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadUserInput(
            f"{field} must be an ISO 8601 timestamp with an offset, between the years 1 "
            "and 9999 in UTC", field=field) from None
