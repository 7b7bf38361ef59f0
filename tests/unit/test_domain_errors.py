"""Error codes and their GraphQL extensions."""

from __future__ import annotations

import pytest

from paystream.domain import (
    BadUserInput,
    ErrorCode,
    Forbidden,
    IdempotencyConflict,
    InternalError,
    NotFound,
    PaystreamError,
    QueryTooComplex,
    RateLimited,
    Unauthenticated,
    Unavailable,
)


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (Unauthenticated, "UNAUTHENTICATED"),
        (Forbidden, "FORBIDDEN"),
        (BadUserInput, "BAD_USER_INPUT"),
        (NotFound, "NOT_FOUND"),
        (IdempotencyConflict, "IDEMPOTENCY_CONFLICT"),
        (QueryTooComplex, "QUERY_TOO_COMPLEX"),
        (Unavailable, "UNAVAILABLE"),
        (InternalError, "INTERNAL"),
    ],
)
def test_one_class_per_code(cls: type[PaystreamError], code: str) -> None:
    error = cls("boom")
    assert error.code == ErrorCode(code) == code
    assert error.graphql_extensions() == {"code": code}
    assert str(error) == error.message == "boom"
    assert isinstance(error, PaystreamError)


def test_every_code_has_a_class() -> None:
    classes: list[type[PaystreamError]] = [
        Unauthenticated,
        Forbidden,
        BadUserInput,
        NotFound,
        IdempotencyConflict,
    ]
    classes += [RateLimited, QueryTooComplex, Unavailable, InternalError]
    assert {c.code for c in classes} == set(ErrorCode)
    assert all(member.value == member.name for member in ErrorCode)


def test_field_and_extensions() -> None:
    error = BadUserInput("bad", field="amount", extensions={"limit": 3})
    assert error.graphql_extensions() == {"code": "BAD_USER_INPUT", "field": "amount", "limit": 3}


def test_rate_limited_carries_retry_after() -> None:
    error = RateLimited("slow down", retry_after_seconds=1.5)
    assert error.retry_after_seconds == 1.5
    assert error.graphql_extensions() == {"code": "RATE_LIMITED", "retryAfter": 1.5}
