"""Payment statuses and the one table of transitions between them.

A payment is created PENDING. The worker moves it to SUCCEEDED or FAILED (a transfer), or to
AUTHORIZED (a hold, ``capture: false``); an AUTHORIZED payment is captured (SUCCEEDED) or
released (CANCELED: by its owner, or by the system when the authorization expires). SUCCEEDED,
FAILED and CANCELED never change again, which is what lets subscriptions complete and caches
trust versions. Refunds change a SUCCEEDED payment's refunded amount, not its status.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "TERMINAL_STATUSES",
    "FailureReason",
    "PaymentStatus",
    "RefundStatus",
    "can_transition",
    "check_transition",
    "is_terminal",
]


class PaymentStatus(StrEnum):
    """Lifecycle of a payment (GraphQL enum ``PaymentStatus``)."""

    PENDING = "PENDING"
    AUTHORIZED = "AUTHORIZED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class RefundStatus(StrEnum):
    """Lifecycle of a refund (GraphQL enum ``RefundStatus``): PENDING, then one of the others."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class FailureReason(StrEnum):
    """Why a payment FAILED or was CANCELED by the system (GraphQL ``failureReason``)."""

    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    INVALID_REQUEST = "INVALID_REQUEST"
    AUTHORIZATION_EXPIRED = "AUTHORIZATION_EXPIRED"
    # A refund the worker found above what is left (the API refuses it first; see lifecycle).
    REFUND_EXCEEDS_PAYMENT = "REFUND_EXCEEDS_PAYMENT"


_ALLOWED: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.PENDING: frozenset(
        {PaymentStatus.AUTHORIZED, PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}),
    PaymentStatus.AUTHORIZED: frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.CANCELED}),
    PaymentStatus.SUCCEEDED: frozenset(),
    PaymentStatus.FAILED: frozenset(),
    PaymentStatus.CANCELED: frozenset(),
}

TERMINAL_STATUSES = frozenset(status for status, nexts in _ALLOWED.items() if not nexts)
"""SUCCEEDED, FAILED and CANCELED: where ``paymentStatus`` completes."""


def is_terminal(status: PaymentStatus | str) -> bool:
    """True for SUCCEEDED, FAILED and CANCELED: statuses that never change again."""
    return not _ALLOWED[PaymentStatus(status)]


def can_transition(frm: PaymentStatus, to: PaymentStatus) -> bool:
    """True for PENDING -> AUTHORIZED | SUCCEEDED | FAILED and AUTHORIZED -> SUCCEEDED |
    CANCELED.

    Staying in the same status is not a transition: a redelivered request must be
    recognised as already applied, not applied again.
    """
    return to in _ALLOWED[frm]


def check_transition(frm: PaymentStatus, to: PaymentStatus) -> None:
    """Raise :class:`ValueError` unless ``frm -> to`` is allowed."""
    if not can_transition(frm, to):
        raise ValueError(f"payment status cannot change from {frm} to {to}")
