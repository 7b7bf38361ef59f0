"""Pure payment logic: money, currencies, statuses, ledger postings, validation, errors.

No I/O, and no imports from the rest of paystream: every other layer depends on this one.
"""

from paystream.domain.currency import CURRENCY_EXPONENTS, currency_exponent
from paystream.domain.errors import (
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
from paystream.domain.ledger import LedgerEntry, Posting, post_transfer
from paystream.domain.money import MAX_MINOR_UNITS, Money, format_minor
from paystream.domain.status import (
    TERMINAL_STATUSES,
    FailureReason,
    PaymentStatus,
    RefundStatus,
    can_transition,
    check_transition,
    is_terminal,
)
from paystream.domain.validation import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_REFERENCE_LENGTH,
    parse_account_id,
    validate_idempotency_key,
    validate_reference,
)

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_MINOR_UNITS",
    "MAX_REFERENCE_LENGTH",
    "TERMINAL_STATUSES",
    "BadUserInput",
    "ErrorCode",
    "FailureReason",
    "Forbidden",
    "IdempotencyConflict",
    "InternalError",
    "LedgerEntry",
    "Money",
    "NotFound",
    "PaymentStatus",
    "PaystreamError",
    "Posting",
    "QueryTooComplex",
    "RateLimited",
    "RefundStatus",
    "Unauthenticated",
    "Unavailable",
    "can_transition",
    "check_transition",
    "currency_exponent",
    "format_minor",
    "is_terminal",
    "parse_account_id",
    "post_transfer",
    "validate_idempotency_key",
    "validate_reference",
]
