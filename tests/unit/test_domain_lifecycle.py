"""The lifecycle rules of ``domain.lifecycle`` and ``domain.ledger`` as a Hypothesis state
machine: one payment between two accounts, with the API's decisions (capture, cancel, refund)
and the worker's postings (the hold or transfer, the accepted command, the expiry, each
refund, and the destination spending its money meanwhile) interleaved in any order. Whatever
the order, money is conserved, no available balance goes negative, the hold is exactly the
authorized amount while AUTHORIZED, refunds never exceed what the payment moved, and every
status change is one the status machine allows."""

from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from paystream.domain import BadUserInput, PaymentStatus, can_transition, is_terminal
from paystream.domain.ledger import post_authorization, post_transfer
from paystream.domain.lifecycle import (
    Action,
    Decision,
    capture_outcome,
    decide_cancel,
    decide_capture,
    decide_refund,
    refund_outcome,
)

SOURCE, DESTINATION = uuid.uuid4(), uuid.uuid4()  # a third account: money that left
amounts = st.integers(min_value=1, max_value=12_000)
maybe_amounts = st.none() | amounts


class PaymentLifecycle(RuleBasedStateMachine):
    @initialize(source=st.integers(0, 10_000), destination=st.integers(0, 10_000),
                amount=st.integers(1, 10_000), capture=st.booleans())
    def start(self, source: int, destination: int, amount: int, capture: bool) -> None:
        self.source, self.destination, self.spent = source, destination, 0
        self.total = source + destination
        self.held = 0
        self.amount, self.capture = amount, capture
        self.status = PaymentStatus.PENDING
        self.captured: int | None = None  # what the payment moved, once SUCCEEDED
        self.requested: Action | None = None
        self.requested_minor: int | None = None
        self.refunded = 0
        self.pending_refunds: list[int] = []

    def move(self, to: PaymentStatus) -> None:
        assert can_transition(self.status, to), (self.status, to)
        self.status = to

    # --- the worker -----------------------------------------------------------------------

    @precondition(lambda self: self.status is PaymentStatus.PENDING)
    @rule()
    def worker_places_the_payment(self) -> None:
        decide = post_transfer if self.capture else post_authorization
        posting = decide(
            source_id=SOURCE, source_balance=self.source, source_currency="USD",
            source_held=self.held, destination_id=DESTINATION,
            destination_balance=self.destination, destination_currency="USD",
            amount_minor=self.amount, currency="USD")
        assert sum(e.amount_minor for e in posting.entries) == 0
        self.move(posting.status)
        self.source, self.destination = posting.source_balance_after, posting.destination_balance_after
        if posting.status is PaymentStatus.AUTHORIZED:
            assert posting.entries == ()
            self.held += self.amount
        elif posting.status is PaymentStatus.SUCCEEDED:
            self.captured = self.amount

    @precondition(lambda self: self.status is PaymentStatus.AUTHORIZED
                  and self.requested is not None)
    @rule()
    def worker_applies_the_command(self) -> None:
        self.held -= self.amount  # the whole hold ends, captured or not
        if self.requested is Action.CAPTURE:
            outcome = capture_outcome(authorized_minor=self.amount,
                                      capture_minor=self.requested_minor)
            assert outcome.captured + outcome.released == self.amount
            self.source -= outcome.captured
            self.destination += outcome.captured
            self.captured = outcome.captured
            self.move(PaymentStatus.SUCCEEDED)
        else:
            self.move(PaymentStatus.CANCELED)

    @precondition(lambda self: self.status is PaymentStatus.AUTHORIZED)
    @rule()
    def authorization_expires(self) -> None:
        self.held -= self.amount
        self.move(PaymentStatus.CANCELED)

    @precondition(lambda self: bool(self.pending_refunds))
    @rule(data=st.data())
    def worker_posts_a_refund(self, data: st.DataObject) -> None:
        amount = self.pending_refunds.pop(data.draw(
            st.integers(0, len(self.pending_refunds) - 1)))
        assert self.captured is not None
        failure = refund_outcome(captured_minor=self.captured, refunded_minor=self.refunded,
                                 amount_minor=amount, destination_available_minor=self.destination)
        if failure is None:
            self.destination -= amount
            self.source += amount
            self.refunded += amount

    @rule(amount=amounts)
    def destination_spends(self, amount: int) -> None:
        """The destination's own outgoing payment, racing refunds."""
        if amount <= self.destination:
            self.destination -= amount
            self.spent += amount

    @precondition(lambda self: self.source > 0)
    @rule(data=st.data())
    def source_pays_someone_else(self, data: st.DataObject) -> None:
        """Another transfer from the source: only its available balance may be paid (the
        amount drawn up to the whole balance, so that holds are tested, not just balances)."""
        amount = data.draw(st.integers(1, self.source))
        posting = post_transfer(
            source_id=SOURCE, source_balance=self.source, source_currency="USD",
            source_held=self.held, destination_id=uuid.uuid4(), destination_balance=0,
            destination_currency="USD", amount_minor=amount, currency="USD")
        if posting.status is PaymentStatus.SUCCEEDED:
            self.source = posting.source_balance_after
            self.spent += amount

    # --- the API --------------------------------------------------------------------------

    @rule(amount=maybe_amounts)
    def partner_captures(self, amount: int | None) -> None:
        before = (self.status, self.requested, self.requested_minor)
        try:
            decision = decide_capture(
                status=self.status, capture=self.capture, amount_minor=self.amount,
                captured_minor=self.captured if not self.capture else None,
                requested=self.requested, requested_capture_minor=self.requested_minor,
                capture_minor=amount if amount is not None else self.amount)
        except BadUserInput as exc:
            reason = exc.graphql_extensions()["reason"]
            wanted = self.amount if amount is None else amount
            if reason == "CAPTURE_EXCEEDS_AUTHORIZATION":
                assert wanted > self.amount
            else:
                assert reason == "PAYMENT_NOT_CAPTURABLE"
                assert self.capture or self.status in (
                    PaymentStatus.FAILED, PaymentStatus.CANCELED) or self.requested is not None
            return
        if decision is Decision.ACCEPT:
            assert self.requested is None and not is_terminal(self.status)
            self.requested = Action.CAPTURE
            self.requested_minor = self.amount if amount is None else amount
        else:
            assert (self.status is PaymentStatus.SUCCEEDED and not self.capture) or before[1:] == (
                Action.CAPTURE, self.amount if amount is None else amount)

    @rule()
    def partner_cancels(self) -> None:
        try:
            decision = decide_cancel(status=self.status, capture=self.capture,
                                     requested=self.requested)
        except BadUserInput as exc:
            assert exc.graphql_extensions()["reason"] == "PAYMENT_NOT_AUTHORIZED"
            assert self.status is not PaymentStatus.CANCELED
            return
        if decision is Decision.ACCEPT:
            assert self.requested is None and not self.capture
            self.requested = Action.CANCEL
        else:
            assert self.status is PaymentStatus.CANCELED or self.requested is Action.CANCEL

    @rule(amount=maybe_amounts)
    def partner_refunds(self, amount: int | None) -> None:
        claimed = self.refunded + sum(self.pending_refunds)
        try:
            accepted = decide_refund(status=self.status, captured_minor=self.captured,
                                     refunded_minor=claimed, refund_minor=amount)
        except BadUserInput as exc:
            reason = exc.graphql_extensions()["reason"]
            if reason == "PAYMENT_NOT_REFUNDABLE":
                assert self.status is not PaymentStatus.SUCCEEDED
            else:
                assert reason == "REFUND_EXCEEDS_PAYMENT" and self.captured is not None
                assert (amount or 0) > self.captured - claimed or claimed == self.captured
            return
        assert self.captured is not None and 0 < accepted <= self.captured - claimed
        self.pending_refunds.append(accepted)

    # --- what always holds ----------------------------------------------------------------

    @invariant()
    def money_is_conserved(self) -> None:
        assert self.source + self.destination + self.spent == self.total

    @invariant()
    def available_balances_never_go_negative(self) -> None:
        assert 0 <= self.held <= self.source and self.destination >= 0

    @invariant()
    def the_hold_is_the_authorization(self) -> None:
        assert self.held == (self.amount if self.status is PaymentStatus.AUTHORIZED else 0)

    @invariant()
    def refunds_never_exceed_what_the_payment_moved(self) -> None:
        moved = self.captured or 0
        assert self.refunded + sum(self.pending_refunds) <= moved
        assert (self.captured is not None) == (self.status is PaymentStatus.SUCCEEDED)


PaymentLifecycle.TestCase.settings = settings(max_examples=300, stateful_step_count=30,
                                              deadline=None)
test_payment_lifecycle = PaymentLifecycle.TestCase
