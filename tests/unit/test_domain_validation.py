"""Idempotency keys, references and account ids."""

from __future__ import annotations

from uuid import UUID

import pytest

from paystream.domain import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_REFERENCE_LENGTH,
    BadUserInput,
    parse_account_id,
    validate_idempotency_key,
    validate_reference,
)


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
