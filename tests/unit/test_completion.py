"""Lists completed by plan (resolvers/completion.py): the same answers as graphql-core's
per-item completion, for every selection the plan takes, and graphql-core's own way for
every selection or value it does not."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from decimal import Decimal
from typing import Any

import pytest
import strawberry
from entity_samples import NOWHERE, SAMPLE_TIME, sample_accounts, sample_payment
from graphql import parse
from graphql.execution import Executor
from strawberry.schema.config import StrawberryConfig

from paystream.client import ACCOUNT_ACTIVITY, PAYMENT_STATUS
from paystream.config import Settings
from paystream.domain.errors import BadUserInput, IdempotencyConflict
from paystream.resolvers.completion import Completable, PaystreamExecutor, plan
from paystream.resolvers.direct import resolve_plain_fields_directly
from paystream.resolvers.schema import build_schema
from paystream.schema.bulk import CreatePaymentError, CreatePaymentResult
from paystream.schema.context import Context
from paystream.schema.scalars import SCALAR_MAP
from paystream.schema.types import Payment
from paystream.services.auth import READ, WRITE, Caller

PAYMENTS = [
    sample_payment(),
    sample_payment(reference="invoice 7", amount_minor=123_456, currency="JPY",
                   metadata_entries=(("order", "17"), ("tier", "gold"))),
    sample_payment(status="AUTHORIZED", capture=False, authorization_ttl_s=60,
                   authorization_expires_at=SAMPLE_TIME, amount_minor=250),
    sample_payment(status="FAILED", failure_reason="INSUFFICIENT_FUNDS", version=2),
]
ERRORS = [BadUserInput("amount is not a number", field="amount"),
          BadUserInput("sourceAccountId: no such account", field="sourceAccountId"),
          IdempotencyConflict("idempotencyKey was already used", field="idempotencyKey")]


def answers() -> list[CreatePaymentResult]:
    found = [CreatePaymentResult(payment=Payment(row=row)) for row in PAYMENTS]
    refused = [CreatePaymentResult(error=CreatePaymentError.of(e)) for e in ERRORS]
    return [found[0], refused[0], found[1], refused[1], found[2], found[3], refused[2]]


@strawberry.type
class Query:
    @strawberry.field
    def planned(self) -> list[CreatePaymentResult]:
        return Completable(answers())

    @strawberry.field
    def executed(self) -> list[CreatePaymentResult]:
        return answers()


def schema_of(query: type) -> strawberry.Schema:
    schema = strawberry.Schema(query=query, execution_context_class=PaystreamExecutor,
                               config=StrawberryConfig(scalar_map=SCALAR_MAP))
    resolve_plain_fields_directly(schema)
    return schema


SCHEMA = schema_of(Query)
RESULT_TYPE = SCHEMA._schema.query_type.fields["planned"].type  # type: ignore[union-attr]

EVERY_PLAIN_FIELD = ("id eventCursor status amount currency reference failureReason createdAt"
                     " updatedAt capturedAmount authorizationExpiresAt amountRefunded"
                     " metadata { key value __typename }")
PLANNED = [
    "payment { id } error { code }",
    f"payment {{ {EVERY_PLAIN_FIELD} }} error {{ code message field reason }}",
    "__typename first: payment { paymentId: id s: status } e: error { __typename code }",
    "error { message } payment { amount currency }",
]
EXECUTED = [
    "payment { ...P } error { code }",  # a fragment
    "payment { id @include(if: true) } error { code }",  # a directive
    "payment { id id } error { code }",  # a key twice
    "payment { id refunds { id } } error { code }",  # an async field
]


def run(selection: str) -> dict[str, Any]:
    fragment = " fragment P on Payment { id status }" if "...P" in selection else ""
    query = f"{{ planned {{ {selection} }} executed {{ {selection} }} }}{fragment}"
    result = asyncio.run(SCHEMA.execute(query))
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


def plan_of(selection: str) -> object:
    document = parse(f"{{ planned {{ {selection} }} }}")
    node = document.definitions[0].selection_set.selections[0]  # type: ignore[attr-defined]
    return plan(RESULT_TYPE, [node])


def items_completed(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The items graphql-core completes one by one from now on (a spy on its executor)."""
    completed: list[object] = []
    original = Executor.complete_list_item_value

    def spy(self: Executor, item: object, *args: Any, **kwargs: Any) -> Any:
        completed.append(item)
        return original(self, item, *args, **kwargs)
    monkeypatch.setattr(Executor, "complete_list_item_value", spy)
    return completed


@pytest.mark.parametrize("selection", PLANNED)
def test_a_plain_selection_is_planned_and_answers_as_graphql_core_does(
        selection: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert plan_of(selection) is not None
    data = run(selection)
    assert data["planned"] == data["executed"]
    assert len(data["planned"]) == len(answers())
    completed = items_completed(monkeypatch)
    alone = asyncio.run(SCHEMA.execute(f"{{ planned {{ {selection} }} }}"))
    assert alone.data == {"planned": data["planned"]}
    assert completed == []  # by plan: no item went through graphql-core


def test_every_plain_field_answers_its_value_coerced() -> None:
    data = run(f"payment {{ {EVERY_PLAIN_FIELD} }} error {{ code message field reason }}")
    japan = data["planned"][2]["payment"]
    assert japan["id"] == str(PAYMENTS[1].id) and uuid.UUID(japan["id"])
    assert japan["amount"] == str(Decimal(123_456)) and japan["currency"] == "JPY"
    assert japan["status"] == "PENDING" and japan["reference"] == "invoice 7"
    assert japan["metadata"] == [{"key": "order", "value": "17", "__typename": "MetadataEntry"},
                                 {"key": "tier", "value": "gold", "__typename": "MetadataEntry"}]
    assert japan["createdAt"] == SAMPLE_TIME.isoformat()
    held = data["planned"][4]["payment"]
    assert held["status"] == "AUTHORIZED" and held["authorizationExpiresAt"] is not None
    assert data["planned"][1] == {"payment": None, "error": {
        "code": "BAD_USER_INPUT", "message": "amount is not a number", "field": "amount",
        "reason": None}}


@pytest.mark.parametrize("selection", EXECUTED)
def test_any_other_selection_is_left_to_graphql_core(
        selection: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert plan_of(selection) is None
    if "refunds" in selection:
        return  # needs a context with loaders: the plan's refusal is what is under test
    completed = items_completed(monkeypatch)
    data = run(selection)
    assert data["planned"] == data["executed"]
    assert len(completed) == 2 * len(answers())  # both lists, item by item


def test_a_value_that_does_not_complete_plainly_gets_graphql_cores_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    @strawberry.type
    class Broken:
        @strawberry.field
        def planned(self) -> list[CreatePaymentResult]:
            bad = Payment(row=sample_payment(status="NOT A STATUS"))
            return Completable([CreatePaymentResult(payment=bad)])

    completed = items_completed(monkeypatch)
    result = asyncio.run(schema_of(Broken).execute("{ planned { payment { id status } } }"))
    assert len(completed) == 1  # declined by the plan, completed by graphql-core
    assert result.errors is not None and len(result.errors) == 1
    assert result.errors[0].path == ["planned", 0, "payment", "status"]
    assert result.data == {"planned": [{"payment": None}]}


# Subscription events completed by plan (PaystreamExecutor.planned_event): the same data as
# graphql-core's execution of the event, or no plan at all.
REAL_SCHEMA = build_schema(Settings(**NOWHERE))  # type: ignore[arg-type]  # sections as mappings
EVENT_DOCUMENTS = [
    ACCOUNT_ACTIVITY,
    PAYMENT_STATUS,
    ("subscription($id: ID!) { a: accountActivity(accountId: $id) { __typename pid: id amount"
    " metadata { key value } eventCursor amountRefunded"
    " sourceAccount { __typename balance availableBalance metadata { key } } } }"),
]


def event_executor(document: str, caller: Caller | None) -> PaystreamExecutor:
    context = Context(services=None, loaders=None, caller=caller)  # type: ignore[arg-type]  # no reads: accounts are carried
    executor = PaystreamExecutor.build(REAL_SCHEMA._schema, parse(document),
                                       context_value=context,
                                       raw_variable_values={"id": str(uuid.uuid4())})
    assert isinstance(executor, PaystreamExecutor)
    return executor


def event_update(payment: Any, accounts: Any) -> Payment:
    known = {a.id: a for a in accounts} if accounts else None
    return Payment(row=payment, accounts=known, executions={}, cursor="c1")


@pytest.mark.parametrize("document", EVENT_DOCUMENTS)
def test_a_subscription_event_is_completed_by_plan_as_graphql_core_executes_it(
        document: str) -> None:
    payment = sample_payment(status="SUCCEEDED", version=2, amount_minor=1234,
                             metadata_entries=(("order", "17"),))
    source, destination = sample_accounts(payment)
    source = dataclasses.replace(source, balance_minor=5000, held_minor=100,
                                 metadata_entries=(("tier", "gold"),))
    owner = Caller(source.partner_id, uuid.uuid4(), frozenset({READ, WRITE}))
    payee = Caller(destination.partner_id, uuid.uuid4(), frozenset({READ}))
    balances = []
    for caller in (owner, payee):
        executor = event_executor(document, caller)
        event = event_update(payment, (source, destination))
        planned = executor.planned_event(event)
        executed = executor.build_per_event_executor(event).execute_operation(False)
        assert not executed.errors
        assert planned is not None and planned.errors is None
        assert planned.data == executed.data
        [shown] = planned.data.values()
        balances.append(shown["sourceAccount"]["balance"])
    assert balances == ["50.00", None]  # the owner's balance; the payee is shown none


def test_a_subscription_event_that_needs_graphql_core_is_not_planned() -> None:
    payment = sample_payment()
    source, destination = sample_accounts(payment)
    writer = Caller(source.partner_id, uuid.uuid4(), frozenset({WRITE}))
    # A balance a write-only key may not read: graphql-core's execution reports the error.
    executor = event_executor(ACCOUNT_ACTIVITY, writer)
    event = event_update(payment, (source, destination))
    assert executor.planned_event(event) is None
    assert executor.build_per_event_executor(event).execute_operation(False).errors
    # An account not carried with its payment would be read: not by plan.
    owner = Caller(source.partner_id, uuid.uuid4(), frozenset({READ}))
    assert event_executor(ACCOUNT_ACTIVITY, owner).planned_event(
        event_update(payment, None)) is None
    # Selections the plan does not take.
    for document in (("subscription { paymentStatus(id: \"x\") { ...P } } "
                     "fragment P on Payment { id }"),
                     "subscription { paymentStatus(id: \"x\") { id @include(if: true) } }",
                     "subscription { paymentStatus(id: \"x\") { refunds { id } } }"):
        assert event_executor(document, owner).planned_event(event) is None


def test_an_event_plan_is_compiled_once_per_document_not_per_event() -> None:
    """The slow path executes each event on a per-event copy of the subscription's executor:
    the copies share the document's plan."""
    payment = sample_payment()
    source, destination = sample_accounts(payment)
    owner = Caller(source.partner_id, uuid.uuid4(), frozenset({READ}))
    executor = event_executor(ACCOUNT_ACTIVITY, owner)
    copies = [executor.build_per_event_executor(event_update(payment, (source, destination)))
              for _ in range(2)]
    assert all(isinstance(c, PaystreamExecutor) for c in copies)
    for copy in copies:
        assert copy.planned_event(copy.root_value) is not None
    first, second = (c._event_plan for c in copies)  # type: ignore[attr-defined]
    assert first is second and first is not None
