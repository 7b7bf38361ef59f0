"""ISO 4217 exponents."""

from __future__ import annotations

import pytest

from paystream.domain import CURRENCY_EXPONENTS, BadUserInput, currency_exponent


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("TND", 3),
        ("CLF", 4),
        ("UYW", 4),
    ],
)
def test_known_exponents(code: str, exponent: int) -> None:
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize(
    "code", ["usd", "Usd", "US", "USDX", "", " USD", "XAU", "XDR", "XTS", "XXX", "ZZZ"]
)
def test_unknown_or_malformed_codes(code: str) -> None:
    with pytest.raises(BadUserInput) as info:
        currency_exponent(code)
    assert info.value.field == "currency"


def test_table_shape() -> None:
    assert len(CURRENCY_EXPONENTS) > 150
    for code, exponent in CURRENCY_EXPONENTS.items():
        assert len(code) == 3 and code.isascii() and code.isupper()
        assert exponent in (0, 2, 3, 4)
    with pytest.raises(TypeError):
        CURRENCY_EXPONENTS["ABC"] = 2  # type: ignore[index]  # read-only on purpose
