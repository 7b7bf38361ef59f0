"""The rules of a payment's life after acceptance: which capture, cancel or refund may be
accepted, and what each one moves. Pure functions on minor units, shared by the API (which
refuses at once) and the worker (which checks again under its locks)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from paystream.domain.errors import BadUserInput
from paystream.domain.status import FailureReason, PaymentStatus

__all__ = [
    "DEFAULT_AUTHORIZATION_TTL_S",
    "MAX_AUTHORIZATION_TTL_S",
    "Action",
    "Decision",
    "Refusal",
    "decide_cancel",
    "decide_capture",
    "decide_refund",
    "refund_outcome",
    "validate_authorization_ttl",
]

DEFAULT_AUTHORIZATION_TTL_S = 7 * 86_400
MAX_AUTHORIZATION_TTL_S = 30 * 86_400


class Refusal(StrEnum):
    """``extensions.reason`` of a refused capture, cancel or refund (DESIGN.md 2a)."""

    PAYMENT_NOT_AUTHORIZED = "PAYMENT_NOT_AUTHORIZED"
    PAYMENT_NOT_CAPTURABLE = "PAYMENT_NOT_CAPTURABLE"
    CAPTURE_EXCEEDS_AUTHORIZATION = "CAPTURE_EXCEEDS_AUTHORIZATION"
    PAYMENT_NOT_REFUNDABLE = "PAYMENT_NOT_REFUNDABLE"
    REFUND_EXCEEDS_PAYMENT = "REFUND_EXCEEDS_PAYMENT"


class Action(StrEnum):
    """A request recorded on an authorized payment, posted by the worker."""

    CAPTURE = "CAPTURE"
    CANCEL = "CANCEL"


class Decision(StrEnum):
    ACCEPT = "ACCEPT"  # record the request and queue it
    UNCHANGED = "UNCHANGED"  # already done or already queued: answer the payment as it is


def refuse(reason: Refusal, message: str, field: str = "paymentId") -> BadUserInput:
    return BadUserInput(message, field=field, extensions={"reason": reason.value})


def validate_authorization_ttl(ttl_s: int | None, *, capture: bool) -> int | None:
    """The lifetime of an authorization, in seconds: 1 to 30 days, only with capture false."""
    if ttl_s is None:
        return None
    if capture:
        raise BadUserInput("authorizationTtlSeconds applies only with capture: false",
                           field="authorizationTtlSeconds")
    if not 1 <= ttl_s <= MAX_AUTHORIZATION_TTL_S:
        raise BadUserInput(f"authorizationTtlSeconds must be 1 to {MAX_AUTHORIZATION_TTL_S}",
                           field="authorizationTtlSeconds")
    return ttl_s


def _awaiting_authorization(status: PaymentStatus, capture: bool) -> bool:
    # A hold not placed yet: its request is queued before anything accepted now (both are
    # keyed by the source account), so the worker places it first.
    return status is PaymentStatus.PENDING and not capture


def decide_capture(*, status: PaymentStatus, capture: bool, amount_minor: int,
                   captured_minor: int | None, requested: Action | None,
                   requested_capture_minor: int | None, capture_minor: int | None,
                   expired: bool = False) -> Decision:
    """Whether a capture of ``capture_minor`` (None: all) may be accepted. Raises the refusal.
    ``expired``: the authorization's lifetime is over (the system's release may not have run
    yet); an expired authorization is not capturable."""
    wanted = amount_minor if capture_minor is None else capture_minor
    if status is PaymentStatus.SUCCEEDED and captured_minor is not None:
        return Decision.UNCHANGED  # captured already: the asked-for end state
    if not (status is PaymentStatus.AUTHORIZED or _awaiting_authorization(status, capture)):
        raise refuse(Refusal.PAYMENT_NOT_CAPTURABLE, f"a {status} payment cannot be captured")
    if expired and requested is None:
        raise refuse(Refusal.PAYMENT_NOT_CAPTURABLE, "the authorization has expired")
    if wanted > amount_minor:
        raise refuse(Refusal.CAPTURE_EXCEEDS_AUTHORIZATION,
                     "amount exceeds the authorized amount", field="amount")
    if requested is Action.CAPTURE and requested_capture_minor == wanted:
        return Decision.UNCHANGED  # the same capture, queued already
    if requested is not None:
        raise refuse(Refusal.PAYMENT_NOT_CAPTURABLE,
                     f"a {requested.lower()} of this payment is in progress")
    return Decision.ACCEPT


def decide_cancel(*, status: PaymentStatus, capture: bool,
                  requested: Action | None) -> Decision:
    """Whether a cancel may be accepted. Raises the refusal."""
    if status is PaymentStatus.CANCELED or requested is Action.CANCEL:
        return Decision.UNCHANGED
    if not (status is PaymentStatus.AUTHORIZED or _awaiting_authorization(status, capture)):
        raise refuse(Refusal.PAYMENT_NOT_AUTHORIZED, f"a {status} payment cannot be canceled")
    if requested is not None:
        raise refuse(Refusal.PAYMENT_NOT_AUTHORIZED, "a capture of this payment is in progress")
    return Decision.ACCEPT


@dataclass(frozen=True)
class CaptureOutcome:
    """What a capture moves (``captured``) and releases of the hold (``released``)."""

    captured: int
    released: int


def capture_outcome(*, authorized_minor: int, capture_minor: int | None) -> CaptureOutcome:
    """The worker's capture of an open hold; the rest of the hold is released."""
    captured = authorized_minor if capture_minor is None else capture_minor
    if not 0 < captured <= authorized_minor:
        raise ValueError(f"capture of {captured} out of 1..{authorized_minor}")
    return CaptureOutcome(captured=captured, released=authorized_minor - captured)


def decide_refund(*, status: PaymentStatus, captured_minor: int | None, refunded_minor: int,
                  refund_minor: int | None) -> int:
    """The amount of a refund of ``refund_minor`` (None: what is left), given what SUCCEEDED
    and PENDING refunds already claim (``refunded_minor``). Raises the refusal."""
    if status is not PaymentStatus.SUCCEEDED or captured_minor is None:
        raise refuse(Refusal.PAYMENT_NOT_REFUNDABLE, f"a {status} payment cannot be refunded")
    left = captured_minor - refunded_minor
    amount = left if refund_minor is None else refund_minor
    if amount <= 0 or amount > left:
        raise refuse(Refusal.REFUND_EXCEEDS_PAYMENT,
                     "amount exceeds what is left to refund",
                     field="amount" if refund_minor is not None else "paymentId")
    return amount


def refund_outcome(*, captured_minor: int, refunded_minor: int, amount_minor: int,
                   destination_available_minor: int) -> FailureReason | None:
    """The worker's check under its locks: None when the refund may be posted, else why it
    FAILS (it moves nothing then)."""
    if amount_minor <= 0:
        raise ValueError(f"a refund must be positive, got {amount_minor}")
    if refunded_minor + amount_minor > captured_minor:
        return FailureReason.REFUND_EXCEEDS_PAYMENT
    if destination_available_minor < amount_minor:
        return FailureReason.INSUFFICIENT_FUNDS
    return None
