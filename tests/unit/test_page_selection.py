"""Whether a payments connection's selection asks for the payments' accounts (the page then
loads them in one batch, schema/types.py), through inline fragments and fragment spreads."""

from __future__ import annotations

from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField

from paystream.schema.types import _selects_accounts


def field(name: str, *selections: object) -> SelectedField:
    return SelectedField(name=name, directives={}, arguments={}, selections=list(selections))  # type: ignore[arg-type]


def connection(*node: object) -> list[SelectedField]:
    return [field("payments", field("edges", field("node", *node)))]


def test_accounts_asked_for_directly() -> None:
    assert _selects_accounts(connection(field("id"), field("sourceAccount", field("id"))))
    assert _selects_accounts(connection(field("destinationAccount", field("name"))))


def test_accounts_not_asked_for() -> None:
    assert not _selects_accounts(connection(field("id"), field("status")))
    # An account field elsewhere in the connection is not a payment's.
    assert not _selects_accounts([field("payments", field("pageInfo", field("sourceAccount")),
                                        field("edges", field("node", field("id"))))])


def test_accounts_asked_for_through_fragments() -> None:
    inline = InlineFragment(type_condition="Payment", directives={},
                            selections=[field("sourceAccount", field("id"))])
    spread = FragmentSpread(name="Edge", type_condition="PaymentEdge", directives={},
                            selections=[field("node", inline)])
    assert _selects_accounts([field("payments", field("edges", spread))])
    assert _selects_accounts([field("payments", InlineFragment(
        type_condition=None, directives={}, selections=[field("edges", field("node", inline))]))])
