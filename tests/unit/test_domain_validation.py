"""Idempotency keys, references and account ids."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.domain import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_REFERENCE_LENGTH,
    BadUserInput,
    parse_account_id,
    validate_idempotency_key,
    validate_reference,
)
from paystream.domain.validation import parse_timestamp


@pytest.mark.parametrize("key", ["a", " padded ", "k" * MAX_IDEMPOTENCY_KEY_LENGTH, "é" * 255])
def test_idempotency_key_accepted_unchanged(key: str) -> None:
    assert validate_idempotency_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "k" * 256, "é" * 256, "a\nb", "a\tb", "a\x00b", "a\x7fb", "a\x85b", "a\ud800b"]
)
def test_idempotency_key_refused(key: str) -> None:
    with pytest.raises(BadUserInput) as info:
        validate_idempotency_key(key)
    assert info.value.field == "idempotencyKey"


@pytest.mark.parametrize("ref", [None, "", "invoice 42", "r" * MAX_REFERENCE_LENGTH, "€" * 140])
def test_reference_accepted(ref: str | None) -> None:
    assert validate_reference(ref) == ref


@pytest.mark.parametrize("ref", ["r" * 141, "line1\nline2", "tab\there", "nul\x00"])
def test_reference_refused(ref: str) -> None:
    with pytest.raises(BadUserInput) as info:
        validate_reference(ref)
    assert info.value.field == "reference"


def test_account_id() -> None:
    text = "0b6f7a1e-9c1d-4c55-8a3e-2f0d4e5b6a7c"
    assert parse_account_id(text, field="sourceAccountId") == UUID(text)
    assert parse_account_id(text.upper(), field="sourceAccountId") == UUID(text)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "42",
        "not-a-uuid",
        "0b6f7a1e9c1d4c558a3e2f0d4e5b6a7c",
        "{0b6f7a1e-9c1d-4c55-8a3e-2f0d4e5b6a7c}",
        "urn:uuid:0b6f7a1e-9c1d-4c55-8a3e-2f0d4e5b6a7c",
        " 0b6f7a1e-9c1d-4c55-8a3e-2f0d4e5b6a7c",
        "0b6f7a1e-9c1d-4c55-8a3e-2f0d4e5b6a7g",
    ],
)
def test_account_id_refused(raw: str) -> None:
    with pytest.raises(BadUserInput) as info:
        parse_account_id(raw, field="destinationAccountId")
    assert info.value.field == "destinationAccountId"


@pytest.mark.parametrize("raw", [
    "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:30:00-00:31", "2024-01-01T00:00:00", "2024-01-01", "294277-01-01T00:00:00Z",
    "", "yesterday", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00+24:00", "\x00",
])
def test_timestamps_outside_postgresql_range_or_without_offset_are_refused(raw: str) -> None:
    with pytest.raises(BadUserInput) as refused:
        parse_timestamp(raw, field="after")
    assert refused.value.field == "after"


# Fixed offsets, as ISO 8601 text carries them (a zone's gaps and folds would make the
# comparison, not the parse, ambiguous).
OFFSETS = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                        max_value=timedelta(hours=23, minutes=59)).map(timezone)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=OFFSETS))
def test_timestamps_with_an_offset_in_range_keep_their_instant(value: datetime) -> None:
    parsed = parse_timestamp(value.isoformat(), field="at")
    assert parsed == value and parsed.utcoffset() == timedelta(0)


def test_control_characters_are_exactly_unicode_categories_cc_and_cs() -> None:
    """The regular expression stands for ``unicodedata.category(ch) in ("Cc", "Cs")``, on
    every code point."""
    import unicodedata

    from paystream.domain.validation import _has_control_character

    wrong = [hex(cp) for cp in range(0x110000)
             if _has_control_character(chr(cp))
             != (unicodedata.category(chr(cp)) in ("Cc", "Cs"))]
    assert wrong == []
