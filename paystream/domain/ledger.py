"""Double-entry posting rules for a transfer between two accounts.

The worker locks both accounts, asks :func:`post_transfer` what to do, and writes exactly
what it returns. Keeping the decision pure means the rules (money is conserved, no balance
goes negative, a failure moves nothing) are tested without a database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from paystream.domain.status import FailureReason, PaymentStatus

__all__ = [
    "SYSTEM_PARTNER_ID",
    "EntryKind",
    "Funding",
    "LedgerEntry",
    "Posting",
    "post_authorization",
    "post_funding",
    "post_transfer",
    "posting_time",
]

SYSTEM_PARTNER_ID = UUID("00000000-0000-0000-0000-000000000001")
"""The partner that owns the settlement accounts (one per currency): where money enters and
leaves the ledger. They are the only accounts whose balance may go negative: a settlement
account holds minus what the partners' accounts of its currency hold."""


class EntryKind(StrEnum):
    """What a posting is (GraphQL ``EntryKind``); every entry of a posting has its kind."""

    PAYMENT = "PAYMENT"
    REFUND = "REFUND"
    CAPTURE = "CAPTURE"
    HOLD = "HOLD"
    RELEASE = "RELEASE"
    FUNDING = "FUNDING"


def posting_time(clock: datetime, last_changes: Iterable[datetime]) -> datetime:
    """When a posting is dated: the clock, but never before the last change of an account it
    touches (its ``updated_at``, read under its row lock).

    Statements list an account's entries by (created_at, id) and ``balanceAt`` takes the last
    entry at or before a time, so per account the dates must follow the order in which the
    running balances were computed. Postings on one account are serialized by its row lock,
    but their clocks are not: two workers a few milliseconds apart, or one clock stepped
    back, could date a later posting earlier. Never before the previous change closes that.
    """
    return max([clock, *last_changes])


@dataclass(frozen=True)
class LedgerEntry:
    """One leg of a posting; ``amount_minor`` is signed (negative debits the account)."""

    account_id: UUID
    amount_minor: int


@dataclass(frozen=True)
class Posting:
    """The outcome of a transfer: its status, the entries to write and the new balances.

    A FAILED posting has a ``failure_reason``, no entries and unchanged balances.
    """

    status: PaymentStatus
    failure_reason: FailureReason | None
    entries: tuple[LedgerEntry, ...]
    source_balance_after: int
    destination_balance_after: int


def post_transfer(
    *,
    source_id: UUID,
    source_balance: int,
    source_currency: str,
    destination_id: UUID,
    destination_balance: int,
    destination_currency: str,
    amount_minor: int,
    currency: str,
    source_held: int = 0,
) -> Posting:
    """Decide the posting of ``amount_minor`` from source to destination.

    Balances are the current (locked) balances in minor units; ``source_held`` is what the
    source's open holds keep from being spent (only the available balance may be paid). The payment FAILS, moving
    nothing, when source and destination are the same account (SAME_ACCOUNT), when the
    two accounts' currencies differ from each other or from the payment's
    (CURRENCY_MISMATCH), or when the source balance is below the amount
    (INSUFFICIENT_FUNDS); checked in that order. Otherwise it SUCCEEDS with two entries
    that sum to zero.

    Raises :class:`ValueError` for a non-positive amount or a negative balance: those are
    validated before a request is accepted, so reaching here with one is a bug.
    """
    if amount_minor <= 0:
        raise ValueError(f"amount_minor must be positive, got {amount_minor}")
    if source_balance < 0 or destination_balance < 0:
        raise ValueError("account balances must not be negative")
    if not 0 <= source_held <= source_balance:
        raise ValueError("holds must lie between 0 and the balance")

    reason: FailureReason | None = None
    if source_id == destination_id:
        reason = FailureReason.SAME_ACCOUNT
    elif not source_currency == destination_currency == currency:
        reason = FailureReason.CURRENCY_MISMATCH
    elif source_balance - source_held < amount_minor:
        reason = FailureReason.INSUFFICIENT_FUNDS
    if reason is not None:
        return Posting(
            status=PaymentStatus.FAILED,
            failure_reason=reason,
            entries=(),
            source_balance_after=source_balance,
            destination_balance_after=destination_balance,
        )
    return Posting(
        status=PaymentStatus.SUCCEEDED,
        failure_reason=None,
        entries=(
            LedgerEntry(account_id=source_id, amount_minor=-amount_minor),
            LedgerEntry(account_id=destination_id, amount_minor=amount_minor),
        ),
        source_balance_after=source_balance - amount_minor,
        destination_balance_after=destination_balance + amount_minor,
    )


def post_authorization(
    *, source_id: UUID, source_balance: int, source_currency: str, source_held: int,
    destination_id: UUID, destination_balance: int, destination_currency: str,
    amount_minor: int, currency: str,
) -> Posting:
    """Decide a hold (``capture: false``): the checks of :func:`post_transfer`, but a success
    is AUTHORIZED and moves nothing (no entries, balances unchanged); the caller adds the
    amount to the source's holds."""
    posting = post_transfer(
        source_id=source_id, source_balance=source_balance, source_currency=source_currency,
        source_held=source_held, destination_id=destination_id,
        destination_balance=destination_balance, destination_currency=destination_currency,
        amount_minor=amount_minor, currency=currency,
    )
    if posting.status is PaymentStatus.FAILED:
        return posting
    return Posting(status=PaymentStatus.AUTHORIZED, failure_reason=None, entries=(),
                   source_balance_after=source_balance,
                   destination_balance_after=destination_balance)


@dataclass(frozen=True)
class Funding:
    """Money entering the ledger: the settlement account pays the funded account."""

    entries: tuple[LedgerEntry, LedgerEntry]
    settlement_balance_after: int
    account_balance_after: int


def post_funding(
    *, settlement_id: UUID, settlement_balance: int, account_id: UUID, account_balance: int,
    amount_minor: int,
) -> Funding:
    """The posting that adds ``amount_minor`` to an account from its currency's settlement
    account (whose balance may go negative). Raises ValueError for a non-positive amount or
    when the two accounts are one."""
    if amount_minor <= 0:
        raise ValueError(f"a funding amount must be positive, got {amount_minor}")
    if settlement_id == account_id:
        raise ValueError("a settlement account cannot fund itself")
    return Funding(
        entries=(LedgerEntry(settlement_id, -amount_minor), LedgerEntry(account_id, amount_minor)),
        settlement_balance_after=settlement_balance - amount_minor,
        account_balance_after=account_balance + amount_minor,
    )
