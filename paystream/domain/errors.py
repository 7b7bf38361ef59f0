"""Domain errors with stable codes.

Each error class carries one :class:`ErrorCode`; the GraphQL layer maps an error to
``extensions.code`` once, through :meth:`PaystreamError.graphql_extensions`. Codes are part
of the public API: partners branch on them, so they never change spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import ClassVar

__all__ = [
    "BadUserInput",
    "ErrorCode",
    "Forbidden",
    "IdempotencyConflict",
    "InternalError",
    "NotFound",
    "PaystreamError",
    "QueryTooComplex",
    "RateLimited",
    "Unauthenticated",
    "Unavailable",
]


class ErrorCode(StrEnum):
    """The values of GraphQL ``extensions.code`` (DESIGN.md section 2)."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    NOT_FOUND = "NOT_FOUND"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    RATE_LIMITED = "RATE_LIMITED"
    QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class PaystreamError(Exception):
    """Base of every error a client may be shown.

    ``message`` is safe to show to a partner; ``field`` names the offending input field
    (GraphQL spelling, e.g. ``"amount"``) when there is one; ``extensions`` adds
    machine-readable details to the GraphQL error.
    """

    # The base class reports INTERNAL so that a bare PaystreamError is never mistaken for
    # the client's fault; subclasses override it.
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        extensions: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self._extensions: dict[str, object] = dict(extensions or {})

    def graphql_extensions(self) -> dict[str, object]:
        """The GraphQL ``extensions`` object: ``code``, ``field`` (if set), then the extras."""
        result: dict[str, object] = {"code": self.code.value}
        if self.field is not None:
            result["field"] = self.field
        result.update(self._extensions)
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class Unauthenticated(PaystreamError):
    """No API key, or one that is unknown or revoked."""

    code = ErrorCode.UNAUTHENTICATED


class Forbidden(PaystreamError):
    """The key lacks the scope the operation needs."""

    code = ErrorCode.FORBIDDEN


class BadUserInput(PaystreamError):
    """An input value is malformed or breaks a business rule checked before enqueueing."""

    code = ErrorCode.BAD_USER_INPUT


class NotFound(PaystreamError):
    """The entity does not exist, or the caller may not see it (reported identically)."""

    code = ErrorCode.NOT_FOUND


class IdempotencyConflict(PaystreamError):
    """The idempotency key was already used with a different request."""

    code = ErrorCode.IDEMPOTENCY_CONFLICT


class RateLimited(PaystreamError):
    """The key exceeded its request rate; ``retryAfter`` says when to try again (seconds)."""

    code = ErrorCode.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float,
        field: str | None = None,
        extensions: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(
            message,
            field=field,
            extensions={**(extensions or {}), "retryAfter": retry_after_seconds},
        )
        self.retry_after_seconds = retry_after_seconds


class QueryTooComplex(PaystreamError):
    """The query exceeds a depth, alias, token or cost limit."""

    code = ErrorCode.QUERY_TOO_COMPLEX


class Unavailable(PaystreamError):
    """A dependency (e.g. the broker) is down; the same request may be retried later."""

    code = ErrorCode.UNAVAILABLE


class InternalError(PaystreamError):
    """Anything unexpected; its message must carry no stack trace or SQL."""

    code = ErrorCode.INTERNAL
