"""Event cursors and the status event's cursor field, without servers."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from entity_samples import sample_payment
from hypothesis import given
from hypothesis import strategies as st

from paystream.domain.errors import BadUserInput
from paystream.domain.feed import EventPosition, decode_event_cursor, encode_event_cursor
from paystream.events.messages import PaymentStatusEvent, UndecodableMessage

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat()
POSITIVE = st.integers(min_value=1, max_value=(1 << 63) - 1)


@given(POSITIVE, POSITIVE)
def test_a_cursor_names_its_position(txid: int, row_id: int) -> None:
    cursor = encode_event_cursor(txid, row_id)
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_event_cursor(cursor) == EventPosition(txid, row_id)


@given(POSITIVE, POSITIVE, POSITIVE, POSITIVE)
def test_positions_order_by_transaction_then_row(a: int, b: int, c: int, d: int) -> None:
    assert (EventPosition(a, b) < EventPosition(c, d)) == ((a, b) < (c, d))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "", "!!!", "not-a-cursor", _b64(b"12"), _b64(b"12:"), _b64(b":12"), _b64(b"0:1"),
    _b64(b"1:0"), _b64(b"-1:2"), _b64(b"+1:2"), _b64(b"01:2"), _b64(b" 1:2"), _b64(b"1:2:3"),
    _b64(f"{1 << 63}:1".encode()), _b64(b"\xff\xfe:1"), "\u00e9\u00e9\u00e9\u00e9",
    _b64(f"2026-01-01T00:00:00+00:00|{uuid.uuid4()}".encode()),
])
def test_anything_else_is_bad_user_input_on_after(cursor: str) -> None:
    with pytest.raises(BadUserInput) as refused:
        decode_event_cursor(cursor)
    assert refused.value.field == "after"


def test_no_cursor_is_the_start() -> None:
    assert decode_event_cursor(None) is None


def _event(**extra: object) -> str:
    payment = sample_payment(status="SUCCEEDED", version=2)
    event = json.loads(PaymentStatusEvent(
        payment_id=payment.id, payment=payment, source_partner_id=uuid.uuid4(),
        destination_partner_id=uuid.uuid4()).encode())
    return json.dumps({**{k: v for k, v in event.items() if k != "cursor"}, **extra})


def test_a_status_event_carries_its_cursor_and_an_old_one_decodes_without() -> None:
    cursor = encode_event_cursor(7, 9)
    decoded = PaymentStatusEvent.decode(_event(cursor=cursor))
    assert decoded.cursor == cursor
    assert PaymentStatusEvent.decode(decoded.encode()) == decoded
    assert PaymentStatusEvent.decode(_event()).cursor is None


def test_a_cursor_that_is_not_a_string_is_undecodable() -> None:
    with pytest.raises(UndecodableMessage):
        PaymentStatusEvent.decode(_event(cursor=12))


@given(POSITIVE, POSITIVE, st.text(max_size=40), st.booleans())
def test_the_cursor_spliced_into_an_encoded_event_is_the_event_encoded_with_it(
        txid: int, row_id: int, reference: str, refunded: bool) -> None:
    # The reference is free text: one that looks like the tail must not fool the splice.
    payment = sample_payment(status="SUCCEEDED", version=2,
                             reference=reference or ',"cursor":null,"type":"payment.status"')
    event = PaymentStatusEvent(
        payment_id=payment.id, payment=payment, source_partner_id=uuid.uuid4(),
        destination_partner_id=uuid.uuid4(),
        refund={"id": str(uuid.uuid4()), "status": "SUCCEEDED"} if refunded else None)
    cursor = encode_event_cursor(txid, row_id)
    spliced = event.encode_with_cursor(event.encode(), cursor)
    assert spliced == replace(event, cursor=cursor).encode()
    assert PaymentStatusEvent.decode(spliced) == replace(event, cursor=cursor)
    # An encoding that does not end as a cursorless event's does is encoded again, in full.
    placed = replace(event, cursor=encode_event_cursor(1, 1))
    assert event.encode_with_cursor(placed.encode(), cursor) == \
        replace(event, cursor=cursor).encode()
