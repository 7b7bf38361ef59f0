"""Double-entry posting rules."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.domain import FailureReason, LedgerEntry, PaymentStatus, Posting, post_transfer

SRC = UUID("00000000-0000-4000-8000-000000000001")
DST = UUID("00000000-0000-4000-8000-000000000002")


def transfer(**overrides: object) -> Posting:
    args: dict[str, object] = {
        "source_id": SRC,
        "source_balance": 10_000,
        "source_currency": "USD",
        "destination_id": DST,
        "destination_balance": 500,
        "destination_currency": "USD",
        "amount_minor": 2_500,
        "currency": "USD",
    }
    args.update(overrides)
    return post_transfer(**args)  # type: ignore[arg-type]  # test helper


def test_success_moves_money() -> None:
    posting = transfer()
    assert posting.status is PaymentStatus.SUCCEEDED
    assert posting.failure_reason is None
    assert posting.entries == (LedgerEntry(SRC, -2_500), LedgerEntry(DST, 2_500))
    assert (posting.source_balance_after, posting.destination_balance_after) == (7_500, 3_000)


def test_whole_balance_may_be_spent() -> None:
    posting = transfer(amount_minor=10_000)
    assert posting.status is PaymentStatus.SUCCEEDED
    assert posting.source_balance_after == 0


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"destination_id": SRC}, FailureReason.SAME_ACCOUNT),
        ({"destination_id": SRC, "currency": "EUR"}, FailureReason.SAME_ACCOUNT),
        ({"destination_currency": "EUR"}, FailureReason.CURRENCY_MISMATCH),
        ({"source_currency": "EUR"}, FailureReason.CURRENCY_MISMATCH),
        ({"currency": "EUR"}, FailureReason.CURRENCY_MISMATCH),
        ({"currency": "EUR", "amount_minor": 10**9}, FailureReason.CURRENCY_MISMATCH),
        ({"amount_minor": 10_001}, FailureReason.INSUFFICIENT_FUNDS),
        ({"source_balance": 0}, FailureReason.INSUFFICIENT_FUNDS),
    ],
)
def test_failures_move_nothing(overrides: dict[str, object], reason: FailureReason) -> None:
    posting = transfer(**overrides)
    assert posting.status is PaymentStatus.FAILED
    assert posting.failure_reason is reason
    assert posting.entries == ()
    assert posting.source_balance_after == overrides.get("source_balance", 10_000)
    assert posting.destination_balance_after == 500


@pytest.mark.parametrize(
    "overrides", [{"amount_minor": 0}, {"amount_minor": -1}, {"source_balance": -1}]
)
def test_programming_errors(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        transfer(**overrides)


balances = st.integers(min_value=0, max_value=10**18)
ids = st.sampled_from([SRC, DST, uuid4()])
codes = st.sampled_from(["USD", "EUR", "JPY"])


@given(
    source_id=ids,
    destination_id=ids,
    source_balance=balances,
    destination_balance=balances,
    amount=st.integers(min_value=1, max_value=10**18),
    source_currency=codes,
    destination_currency=codes,
    currency=codes,
)
def test_posting_invariants(
    source_id: UUID,
    destination_id: UUID,
    source_balance: int,
    destination_balance: int,
    amount: int,
    source_currency: str,
    destination_currency: str,
    currency: str,
) -> None:
    posting = post_transfer(
        source_id=source_id,
        source_balance=source_balance,
        source_currency=source_currency,
        destination_id=destination_id,
        destination_balance=destination_balance,
        destination_currency=destination_currency,
        amount_minor=amount,
        currency=currency,
    )
    after = posting.source_balance_after + posting.destination_balance_after
    assert after == source_balance + destination_balance  # money is conserved
    assert posting.source_balance_after >= 0
    assert posting.destination_balance_after >= 0
    assert sum(entry.amount_minor for entry in posting.entries) == 0
    if posting.status is PaymentStatus.SUCCEEDED:
        assert posting.failure_reason is None
        assert len(posting.entries) == 2
        assert posting.source_balance_after == source_balance - amount
        assert source_id != destination_id
        assert source_currency == destination_currency == currency
    else:
        assert posting.status is PaymentStatus.FAILED
        assert posting.failure_reason is not None
        assert posting.entries == ()
        assert posting.source_balance_after == source_balance
