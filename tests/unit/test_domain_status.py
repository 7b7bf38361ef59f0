"""Payment status transitions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.domain import (
    TERMINAL_STATUSES,
    PaymentStatus,
    can_transition,
    check_transition,
    is_terminal,
)

statuses = st.sampled_from(list(PaymentStatus))
P = PaymentStatus

ALLOWED = {
    (P.PENDING, P.AUTHORIZED), (P.PENDING, P.SUCCEEDED), (P.PENDING, P.FAILED),
    (P.AUTHORIZED, P.SUCCEEDED), (P.AUTHORIZED, P.CANCELED),
}


def test_allowed_transitions() -> None:
    for frm, to in ALLOWED:
        assert can_transition(frm, to)
    assert not can_transition(P.PENDING, P.PENDING)
    assert not can_transition(P.PENDING, P.CANCELED)  # only a hold is canceled
    assert not can_transition(P.AUTHORIZED, P.FAILED)
    assert not can_transition(P.SUCCEEDED, P.FAILED)
    assert not can_transition(P.CANCELED, P.SUCCEEDED)
    assert not can_transition(P.FAILED, P.PENDING)


def test_terminal() -> None:
    assert TERMINAL_STATUSES == {P.SUCCEEDED, P.FAILED, P.CANCELED}
    assert not is_terminal(P.PENDING)
    assert not is_terminal(P.AUTHORIZED)  # paymentStatus stays open on a hold
    assert is_terminal("CANCELED")


@given(frm=statuses, to=statuses)
def test_transitions_are_exactly_the_table(frm: PaymentStatus, to: PaymentStatus) -> None:
    allowed = can_transition(frm, to)
    assert allowed == ((frm, to) in ALLOWED)
    assert not (allowed and is_terminal(frm))  # nothing leaves a terminal status
    if allowed:
        check_transition(frm, to)
    else:
        with pytest.raises(ValueError, match=f"from {frm} to {to}"):
            check_transition(frm, to)
