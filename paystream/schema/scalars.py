"""Scalars: Decimal travels as a string so no client ever parses money as a float."""

from __future__ import annotations

import decimal
from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

from ..domain.errors import BadUserInput


def _serialize(value: decimal.Decimal | str) -> str:
    return value if isinstance(value, str) else format(value, "f")


def _parse(value: object) -> str:
    # Strings only: a JSON number may already have passed through a float on the way here.
    # The text itself is checked by the domain (Money.parse), which knows the currency and
    # reports the offending field; here it stays exactly as the client wrote it.
    if not isinstance(value, str):
        raise BadUserInput('Decimal values are sent as strings, for example "125.50"')
    return value


Decimal = NewType("Decimal", decimal.Decimal)
"""Exact decimal, a string on the wire. Used as an annotation; mapped by ``SCALAR_MAP``."""

SCALAR_MAP: dict[object, ScalarDefinition] = {
    Decimal: strawberry.scalar(
        name="Decimal",
        description='An exact decimal number, serialized as a string: "125.50".',
        serialize=_serialize,
        parse_value=_parse,
    )
}
