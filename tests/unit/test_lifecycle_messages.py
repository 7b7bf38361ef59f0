"""The new messages of payments.requested and the cache's backward compatibility: entries
cached before holds and refunds existed (they live 24 h) still decode, with the defaults."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
from entity_samples import SAMPLE_TIME, sample_accounts, sample_payment
from hypothesis import given
from hypothesis import strategies as st

from paystream.cache.entities import account_from, payment_from
from paystream.domain.entities import PaymentRow, encode_payment
from paystream.events.messages import (
    PaymentCommand,
    PaymentRequested,
    PaymentStatusEvent,
    RefundRequested,
    UndecodableMessage,
    decode_requested,
    encode_accepted,
)

NOW = SAMPLE_TIME.isoformat()


def test_old_payment_entry_decodes_with_lifecycle_defaults() -> None:
    old = {"id": str(uuid.uuid4()), "partner_id": str(uuid.uuid4()), "idempotency_key": "k",
           "request_hash": "h" * 64, "source_account_id": str(uuid.uuid4()),
           "destination_account_id": str(uuid.uuid4()), "amount_minor": 125, "currency": "USD",
           "reference": None, "status": "SUCCEEDED", "failure_reason": None, "version": 2,
           "created_at": NOW, "updated_at": NOW}
    row = payment_from(json.loads(json.dumps(old)))
    assert (row.capture, row.authorization_ttl_s, row.authorization_expires_at) == (True, None, None)
    assert (row.captured_minor, row.refunded_minor) == (None, 0)
    assert row.captured_amount_minor == 125  # a transfer moved its whole amount


def test_old_account_entry_decodes_with_nothing_held() -> None:
    old = {"id": str(uuid.uuid4()), "partner_id": str(uuid.uuid4()), "name": "a",
           "currency": "USD", "balance_minor": 500, "version": 3, "created_at": NOW,
           "updated_at": NOW}
    row = account_from(old)
    assert (row.held_minor, row.available_minor) == (0, 500)


def test_commands_and_refunds_round_trip_and_are_told_apart() -> None:
    command = PaymentCommand(type="payment.capture_requested", payment_id=uuid.uuid4(),
                             partner_id=uuid.uuid4(), source_account_id=uuid.uuid4(),
                             amount_minor=300, created_at=NOW)
    refund = RefundRequested(refund_id=uuid.uuid4(), payment_id=uuid.uuid4(),
                             partner_id=uuid.uuid4(), source_account_id=uuid.uuid4(),
                             amount_minor=50, created_at=NOW)
    assert decode_requested(command.encode()) == command
    assert decode_requested(refund.encode()) == refund
    cancel = PaymentCommand(type="payment.cancel_requested", payment_id=command.payment_id,
                            partner_id=command.partner_id,
                            source_account_id=command.source_account_id, amount_minor=None,
                            created_at=NOW)
    assert decode_requested(cancel.encode()) == cancel
    request = PaymentRequested.of(_payment())
    assert decode_requested(request.encode()) == request


def _payment(**changes: object) -> PaymentRow:
    return sample_payment(metadata_entries=(("order", "7"),), **changes)


def test_a_request_of_schema_1_decodes_as_the_pending_payment_it_named() -> None:
    """Requests written by the release before (flat fields) may still wait in the outbox."""
    row = _payment()
    flat = {"type": "payment.requested", "schema": 1, "payment_id": str(row.id),
            "partner_id": str(row.partner_id), "idempotency_key": "k", "request_hash": "h",
            "source_account_id": str(row.source_account_id),
            "destination_account_id": str(row.destination_account_id), "amount_minor": 1,
            "currency": "USD", "reference": None, "created_at": NOW}
    decoded = decode_requested(json.dumps(flat).encode())
    assert isinstance(decoded, PaymentRequested)
    assert decoded.payment == replace(row, metadata_entries=())


@pytest.mark.parametrize("change", [{"amount_minor": "12"}, {"amount_minor": True},
                                    {"id": "x"}, {"id": str(uuid.uuid4())},
                                    {"created_at": "yesterday"}])
def test_a_request_whose_payment_field_has_the_wrong_type_is_undecodable(
        change: dict[str, object]) -> None:
    data = json.loads(PaymentRequested.of(_payment()).encode())
    data["payment"].update(change)
    with pytest.raises(UndecodableMessage, match="payment"):
        decode_requested(json.dumps(data).encode())


@pytest.mark.parametrize("raw", [
    b'{"type": "payment.capture_requested", "payment_id": "x"}',
    b'{"type": "refund.requested", "refund_id": "00000000-0000-0000-0000-000000000001"}',
    (b'{"type": "payment.capture_requested", "payment_id": "00000000-0000-0000-0000-000000000001",'
     b' "partner_id": "00000000-0000-0000-0000-000000000001", "source_account_id":'
     b' "00000000-0000-0000-0000-000000000001", "amount_minor": "12", "created_at": "now"}'),
])
def test_malformed_lifecycle_messages_are_undecodable(raw: bytes) -> None:
    with pytest.raises(UndecodableMessage):
        decode_requested(raw)


def test_status_event_without_a_refund_still_decodes() -> None:
    payment = _payment(status="AUTHORIZED", version=2)
    event = PaymentStatusEvent(payment_id=payment.id, payment=payment,
                               source_partner_id=uuid.uuid4(), destination_partner_id=uuid.uuid4())
    decoded = PaymentStatusEvent.decode(event.encode())
    assert decoded == event
    assert decoded.refund is None and not decoded.terminal and decoded.version == 2


def test_a_status_event_of_schema_1_decodes_from_its_snapshot() -> None:
    """Schema 1 carried flat copies of the payment's fields beside its snapshot (the events
    feed keeps 30 days of them): the snapshot is what counts."""
    row = _payment(status="SUCCEEDED", version=2)
    snapshot = json.loads(PaymentRequested.of(row).encode())["payment"]
    old = {"type": "payment.status", "payment_id": str(row.id), "version": 2,
           "status": "SUCCEEDED", "source_partner_id": str(uuid.uuid4()),
           "destination_partner_id": str(uuid.uuid4()), "source_balance_minor": 5,
           "payment": snapshot, "accounts": None, "refund": None, "cursor": None}
    decoded = PaymentStatusEvent.decode(json.dumps(old))
    assert decoded.payment == row and decoded.terminal


@given(reference=st.none() | st.text(max_size=20),
       metadata=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)),
                         max_size=3, unique_by=lambda kv: kv[0]),
       capture=st.booleans(), amount=st.integers(1, 10**15))
def test_an_accepted_payments_spliced_messages_are_its_messages_byte_for_byte(
        reference: str | None, metadata: list[tuple[str, str]], capture: bool,
        amount: int) -> None:
    payment = sample_payment(reference=reference, metadata_entries=tuple(metadata),
                             capture=capture, amount_minor=amount,
                             authorization_ttl_s=None if capture else 3600)
    source, destination = sample_accounts(payment)
    request, event = encode_accepted(payment, encode_payment(payment), source.partner_id,
                                     destination.partner_id)
    assert request == PaymentRequested.of(payment).encode()
    assert event == PaymentStatusEvent.of(payment, source, destination,
                                          with_accounts=False).encode()
