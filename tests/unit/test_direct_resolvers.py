"""Plain fields resolved straight from graphql-core (resolvers/direct.py): which fields take
the short way, and that their answers are Strawberry's."""

from __future__ import annotations

import asyncio
import enum
from decimal import Decimal
from typing import Any

import strawberry
from entity_samples import NOWHERE
from strawberry.permission import BasePermission

from paystream.config import Settings
from paystream.resolvers.direct import resolve_plain_fields_directly
from paystream.resolvers.schema import DIRECT_WITH_ARGUMENTS, build_schema


class Allow(BasePermission):
    message = "never refused"

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return True


@strawberry.type
class Thing:
    value: strawberry.Private[int]

    @strawberry.field
    def plain(self) -> int:
        return self.value

    @strawberry.field
    def with_info(self, info: strawberry.Info) -> str:
        return f"{info.context['who']}:{self.value}:{info.path.key}:{info.field_name}"

    @strawberry.field
    def with_argument(self, times: int = 2) -> int:
        return self.value * times

    @strawberry.field
    async def later(self) -> int:
        return self.value + 10

    @strawberry.field(permission_classes=[Allow])
    def guarded(self) -> int:
        return -self.value


@strawberry.type
class Query:
    @strawberry.field
    def things(self) -> list[Thing]:
        return [Thing(value=1), Thing(value=2)]


# A schema is built without connecting to anything.
@strawberry.enum
class Colour(enum.Enum):
    RED = "RED"
    BLUE = "BLUE"


@strawberry.input
class Tag:
    key: str
    value: str | None = None


@strawberry.input
class Order:
    name: str
    amount: Decimal
    colour: Colour
    note: str | None  # no default: None when absent
    count: int | None = 7
    flag: bool | None = True
    tags: list[Tag] | None = None


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def place(self, info: strawberry.Info, orders: list[Order],
                    label: str | None = None) -> str:
        return repr((orders, label))  # dataclass reprs: nested inputs show as instances


ORDERS = """mutation($orders: [Order!]!, $label: String) { place(orders: $orders, label: $label) }"""


QUERY = "{ things { plain withInfo withArgument(times: 3) later guarded } }"


def test_only_sync_fields_without_arguments_or_extensions_are_replaced() -> None:
    schema = strawberry.Schema(query=Query)
    assert sorted(resolve_plain_fields_directly(schema)) == ["Thing.plain", "Thing.withInfo"]


def test_a_field_named_with_arguments_converts_them_as_strawberry_does() -> None:
    plain = strawberry.Schema(query=Query, mutation=Mutation)
    direct = strawberry.Schema(query=Query, mutation=Mutation)
    assert "Mutation.place" in resolve_plain_fields_directly(
        direct, with_arguments={"Mutation.place"})
    cases: list[dict[str, Any]] = [
        {"orders": [{"name": "a", "amount": "1.50", "colour": "RED"}]},
        {"orders": [{"name": "b", "amount": "2", "colour": "BLUE", "note": "n", "count": None,
                     "flag": False, "tags": [{"key": "k"}, {"key": "j", "value": None}]}],
         "label": "x"},
        {"orders": [], "label": None},
    ]

    async def run(schema: strawberry.Schema, variables: dict[str, Any]) -> Any:
        result = await schema.execute(ORDERS, variable_values=variables)
        assert result.errors is None, result.errors
        return result.data

    for variables in cases:
        assert asyncio.run(run(direct, variables)) == asyncio.run(run(plain, variables))
    # And the conversion is the real one (instances, Decimals, enum members, nested inputs).
    shown = asyncio.run(run(direct, cases[1]))["place"]
    assert "amount=Decimal('2')" in shown and "Colour.BLUE" in shown
    assert "tags=[Tag(key='k', value=None), Tag(key='j', value=None)]" in shown


def test_the_answers_are_strawberrys() -> None:
    plain, direct = strawberry.Schema(query=Query), strawberry.Schema(query=Query)
    resolve_plain_fields_directly(direct)

    async def run(schema: strawberry.Schema) -> Any:
        result = await schema.execute(QUERY, context_value={"who": "me"})
        assert result.errors is None
        return result.data

    assert asyncio.run(run(direct)) == asyncio.run(run(plain)) == {"things": [
        {"plain": v, "withInfo": f"me:{v}:withInfo:withInfo", "withArgument": 3 * v,
         "later": v + 10, "guarded": -v} for v in (1, 2)]}


def test_the_hot_fields_of_the_real_schema_take_the_short_way() -> None:
    settings = Settings(**NOWHERE)  # type: ignore[arg-type]  # sections as mappings
    replaced = set(resolve_plain_fields_directly(build_schema(settings),
                                                 with_arguments=DIRECT_WITH_ARGUMENTS))
    assert {"Payment.id", "Payment.status", "Payment.amount", "Payment.sourceAccount",
            "Payment.destinationAccount", "Account.id", "Account.name",
            "Account.balance"} <= replaced
    assert {"Mutation.createPayment", "Mutation.createPayments"} <= replaced
    # Async fields and fields with arguments keep Strawberry's resolver.
    assert not {"Account.payments", "Account.entries", "Payment.refunds"} & replaced
