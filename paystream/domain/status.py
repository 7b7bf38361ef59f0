"""Payment statuses and the transitions between them.

A payment is created PENDING and ends exactly once, SUCCEEDED or FAILED. Terminal statuses
never change again, which is what lets subscriptions complete and caches trust versions.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "FailureReason",
    "PaymentStatus",
    "can_transition",
    "check_transition",
    "is_terminal",
]


class PaymentStatus(StrEnum):
    """Lifecycle of a payment (GraphQL enum ``PaymentStatus``)."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class FailureReason(StrEnum):
    """Why a payment FAILED (GraphQL ``Payment.failureReason``)."""

    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    INVALID_REQUEST = "INVALID_REQUEST"


_ALLOWED: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.PENDING: frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}),
    PaymentStatus.SUCCEEDED: frozenset(),
    PaymentStatus.FAILED: frozenset(),
}


def is_terminal(status: PaymentStatus) -> bool:
    """True for SUCCEEDED and FAILED: statuses that never change again."""
    return not _ALLOWED[status]


def can_transition(frm: PaymentStatus, to: PaymentStatus) -> bool:
    """True only for PENDING -> SUCCEEDED and PENDING -> FAILED.

    Staying in the same status is not a transition: a redelivered request must be
    recognised as already applied, not applied again.
    """
    return to in _ALLOWED[frm]


def check_transition(frm: PaymentStatus, to: PaymentStatus) -> None:
    """Raise :class:`ValueError` unless ``frm -> to`` is allowed."""
    if not can_transition(frm, to):
        raise ValueError(f"payment status cannot change from {frm} to {to}")
