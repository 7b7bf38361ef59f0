"""Inquiry's pure rules: metadata validation, posting dates, entry cursors, filtered-page cost,
a page under a status filter."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from entity_samples import NOWHERE, sample_payment
from graphql import parse, validate
from hypothesis import given
from hypothesis import strategies as st

from paystream.config import Settings
from paystream.db.payments import NO_FILTER, PaymentFilter
from paystream.domain.entities import PaymentRow
from paystream.domain.errors import BadUserInput
from paystream.domain.ledger import posting_time
from paystream.domain.metadata import metadata_from_json, metadata_json, validate_metadata
from paystream.resolvers.schema import build_schema
from paystream.schema.limits import query_limits_rule
from paystream.schema.pagination import decode_entry_cursor, encode_cursor
from paystream.services.reads import PaymentPage

keys = st.text("abcXYZ019_.-", min_size=1, max_size=40)
values = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=500)


@given(st.dictionaries(keys, values, max_size=20))
def test_valid_metadata_is_kept_in_order_and_round_trips(entries: dict[str, str]) -> None:
    pairs = list(entries.items())
    metadata = validate_metadata(pairs)
    assert list(metadata) == pairs
    assert metadata_from_json(metadata_json(metadata)) == metadata


@pytest.mark.parametrize(("pairs", "field"), [
    ([("ok", "1"), ("sp ace", "2")], "metadata[1].key"),
    ([("", "1")], "metadata[0].key"),
    ([("é", "1")], "metadata[0].key"),
    ([("k" * 41, "1")], "metadata[0].key"),
    ([("a", "1"), ("b", "2"), ("a", "3")], "metadata[2].key"),
    ([("a", "v" * 501)], "metadata[0].value"),
    ([("a", "nul\x00")], "metadata[0].value"),
    ([(f"k{i}", "v") for i in range(21)], "metadata"),
])
def test_invalid_metadata_names_the_entry(pairs: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(BadUserInput) as refused:
        validate_metadata(pairs)
    assert refused.value.field == field


def test_no_metadata_is_empty() -> None:
    assert validate_metadata(None) == () == metadata_from_json(None) == metadata_from_json("[]")


def test_a_posting_is_never_dated_before_its_accounts_last_change() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert posting_time(now, [now - timedelta(seconds=1)]) == now
    # Another worker's clock ran ahead: the later posting takes the later date.
    ahead = now + timedelta(milliseconds=3)
    assert posting_time(now, [now - timedelta(days=1), ahead]) == ahead
    assert posting_time(now, []) == now


class _Entry:
    def __init__(self, entry_id: int, created_at: datetime) -> None:
        self.id, self.created_at = entry_id, created_at


def test_entry_cursors_round_trip_and_refuse_what_the_api_never_issued() -> None:
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert decode_entry_cursor(encode_cursor(_Entry(42, at))) == (at, 42)  # type: ignore[arg-type]

    def raw(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    for bad in ("x", raw(f"{at.isoformat()}|0"), raw(f"{at.isoformat()}|-1"),
                raw(f"{at.isoformat()}|{1 << 63}"), raw(f"{at.isoformat()}|07"),
                raw(f"{at.isoformat()}|00000000-0000-0000-0000-000000000001"), raw("2026|1")):
        with pytest.raises(BadUserInput) as refused:
            decode_entry_cursor(bad)
        assert refused.value.field == "after"


def test_a_filtered_page_counts_its_page_once_more() -> None:
    settings = Settings(**NOWHERE, limits={"max_query_cost": 1000})  # type: ignore[arg-type]
    schema = build_schema(settings)._schema
    rule = query_limits_rule(settings.limits)

    def cost_ok(document: str) -> bool:
        return not validate(schema, parse(document), [rule])

    # payments (1) + 100 x (edges, node, id) = 301; filtered: + 100 = 401.
    plain = 'query { payments(accountId: "a", first: 100) { edges { node { id } } } }'
    filtered = ('query { payments(accountId: "a", first: 100, filter: {status: FAILED})'
                ' { edges { node { id } } } }')
    assert cost_ok(plain) and cost_ok(filtered)
    tight = Settings(**NOWHERE, limits={"max_query_cost": 350})  # type: ignore[arg-type]
    tight_rule = query_limits_rule(tight.limits)
    assert not validate(schema, parse(plain), [tight_rule])
    assert validate(schema, parse(filtered), [tight_rule])
    ranged = ('query { account(id: "a") { entries(first: 100, from: "2026-01-01T00:00:00Z")'
              ' { edges { node { amount balanceAfter } } } } }')
    assert validate(schema, parse(ranged), [tight_rule])


def _payment(status: str, second: int) -> PaymentRow:
    at = datetime(2026, 1, 1, tzinfo=UTC) - timedelta(seconds=second)
    return sample_payment(status=status, version=2, created_at=at, updated_at=at)


def test_a_page_under_a_status_filter_drops_what_left_the_status_and_still_moves_on() -> None:
    # Newest first, as read: the second has SUCCEEDED since the replica's PENDING row (the
    # cache's newer version replaced it), the third is the sentinel of "more follow".
    fetched = [_payment("PENDING", 1), _payment("SUCCEEDED", 2), _payment("PENDING", 3)]
    page = PaymentPage.of(fetched, 2, PaymentFilter(status="PENDING"))
    assert page.rows == fetched[:1]
    assert page.more and page.last == fetched[1]  # the next page starts past the dropped one
    whole = PaymentPage.of(fetched, 3, PaymentFilter(status="PENDING"))
    assert whole.rows == [fetched[0], fetched[2]] and not whole.more
    assert PaymentPage.of(fetched, 2, NO_FILTER).rows == fetched[:2]
    empty = PaymentPage.of([], 2, NO_FILTER)
    assert (empty.rows, empty.more, empty.last) == ([], False, None)
