"""GraphQL enums."""

from __future__ import annotations

from enum import Enum

import strawberry


@strawberry.enum(description="Where a payment is in its life.")
class PaymentStatus(Enum):
    PENDING = "PENDING"
    AUTHORIZED = "AUTHORIZED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


@strawberry.enum(description="Where a refund is in its life.")
class RefundStatus(Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@strawberry.enum(description="What a ledger entry's posting is. Statements list postings "
                 "(PAYMENT, CAPTURE, REFUND, FUNDING); a hold moves no posted money, so HOLD "
                 "and RELEASE name no entry today (see availableBalance).")
class EntryKind(Enum):
    PAYMENT = "PAYMENT"
    REFUND = "REFUND"
    CAPTURE = "CAPTURE"
    HOLD = "HOLD"
    RELEASE = "RELEASE"
    FUNDING = "FUNDING"


@strawberry.enum(description="A payment seen from one account: money coming in or going out.")
class PaymentDirection(Enum):
    INCOMING = "INCOMING"
    OUTGOING = "OUTGOING"
