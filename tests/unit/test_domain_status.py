"""Payment status transitions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.domain import PaymentStatus, can_transition, check_transition, is_terminal

statuses = st.sampled_from(list(PaymentStatus))


def test_allowed_transitions() -> None:
    assert can_transition(PaymentStatus.PENDING, PaymentStatus.SUCCEEDED)
    assert can_transition(PaymentStatus.PENDING, PaymentStatus.FAILED)
    assert not can_transition(PaymentStatus.PENDING, PaymentStatus.PENDING)
    assert not can_transition(PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)
    assert not can_transition(PaymentStatus.FAILED, PaymentStatus.PENDING)


def test_terminal() -> None:
    assert not is_terminal(PaymentStatus.PENDING)
    assert is_terminal(PaymentStatus.SUCCEEDED)
    assert is_terminal(PaymentStatus.FAILED)


@given(frm=statuses, to=statuses)
def test_transitions_only_leave_pending(frm: PaymentStatus, to: PaymentStatus) -> None:
    allowed = can_transition(frm, to)
    assert allowed == (frm is PaymentStatus.PENDING and is_terminal(to))
    if allowed:
        check_transition(frm, to)
    else:
        with pytest.raises(ValueError, match=f"from {frm} to {to}"):
            check_transition(frm, to)
