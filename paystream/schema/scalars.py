"""Scalars: Decimal travels as a string so no client ever parses money as a float."""

from __future__ import annotations

import decimal
import re
from typing import NewType

import strawberry

from ..domain.errors import BadUserInput


def _serialize(value: decimal.Decimal) -> str:
    return format(value, "f")


def _parse(value: object) -> decimal.Decimal:
    # Strings only: a JSON number may already have passed through a float on the way here.
    if not isinstance(value, str):
        raise BadUserInput("Decimal values are sent as strings, for example \"125.50\"")
    text = value.strip()
    # Plain notation only: "1e309", "NaN" and "Infinity" are refused here, before Decimal
    # would accept them.
    if len(text) > 64 or not _PLAIN.fullmatch(text):
        raise BadUserInput('amount must be a plain decimal number such as "125.50"')
    return decimal.Decimal(text)


_PLAIN = re.compile(r"-?[0-9]+(\.[0-9]+)?")


Decimal = NewType("Decimal", decimal.Decimal)
"""Exact decimal, a string on the wire. Used as an annotation; mapped by ``SCALAR_MAP``."""

SCALAR_MAP = {
    Decimal: strawberry.scalar(
        name="Decimal",
        description='An exact decimal number, serialized as a string: "125.50".',
        serialize=_serialize,
        parse_value=_parse,
    )
}
