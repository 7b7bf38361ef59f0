"""Money: exact parsing, formatting and arithmetic."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.domain import (
    CURRENCY_EXPONENTS,
    MAX_MINOR_UNITS,
    BadUserInput,
    Money,
    format_minor,
)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("125.50", "USD", 12550),
        ("125.5", "USD", 12550),
        ("10", "USD", 1000),
        ("0.01", "USD", 1),
        ("007.50", "USD", 750),
        ("100", "JPY", 100),
        ("1", "JPY", 1),
        ("1.000", "BHD", 1000),
        ("0.001", "BHD", 1),
        ("2.5", "KWD", 2500),
        ("0.0001", "CLF", 1),
        ("100000000000000", "JPY", MAX_MINOR_UNITS // 10),
        ("1000000000000000", "JPY", MAX_MINOR_UNITS),
        ("10000000000000.00", "USD", MAX_MINOR_UNITS),
    ],
)
def test_parse_examples(amount: str, currency: str, minor: int) -> None:
    assert Money.parse(amount, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (Decimal("125.50"), "USD", 12550),
        (Decimal("1E+2"), "JPY", 100),
        (Decimal("1E+2"), "USD", 10000),
        (Decimal("0.001"), "BHD", 1),
    ],
)
def test_parse_decimal_examples(amount: Decimal, currency: str, minor: int) -> None:
    assert Money.parse(amount, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("0", "USD", "greater than 0"),
        ("0.00", "USD", "greater than 0"),
        ("-0", "USD", "greater than 0"),
        ("-5", "USD", "greater than 0"),
        ("-0.001", "USD", "greater than 0"),
        ("0.001", "USD", "USD takes at most 2 decimals"),
        ("10.500", "USD", "at most 2 decimals"),
        ("100.0", "JPY", "JPY takes no decimals"),
        ("1.0001", "BHD", "BHD takes at most 3 decimals"),
        ("1000000000000001", "JPY", "at most 1000000000000000 JPY"),
        ("10000000000000.01", "USD", "at most 10000000000000.00 USD"),
        ("9" * 5000, "USD", "at most"),
        ("NaN", "USD", "plain decimal"),
        ("Infinity", "USD", "plain decimal"),
        ("-Infinity", "USD", "plain decimal"),
        ("1e309", "USD", "plain decimal"),
        ("1E2", "USD", "plain decimal"),
        ("+5", "USD", "plain decimal"),
        ("1 000", "USD", "plain decimal"),
        ("1_000", "USD", "plain decimal"),
        ("1,50", "USD", "plain decimal"),
        (".5", "USD", "plain decimal"),
        ("5.", "USD", "plain decimal"),
        ("", "USD", "plain decimal"),
        ("   ", "USD", "plain decimal"),
        ("١٢٣", "USD", "plain decimal"),  # Arabic-Indic digits
        ("１２", "USD", "plain decimal"),  # full-width digits
        ("0x10", "USD", "plain decimal"),
    ],
)
def test_parse_refusals(amount: str, currency: str, message: str) -> None:
    with pytest.raises(BadUserInput) as info:
        Money.parse(amount, currency)
    assert info.value.field == "amount"
    assert message in info.value.message


@pytest.mark.parametrize(
    "amount",
    [
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal(0),
        Decimal("-0"),
        Decimal(-1),
        Decimal("0.001"),
        Decimal("100.000"),
        Decimal("1E+309"),
        Decimal("1E+999999"),
        Decimal("10000000000000.01"),
    ],
)
def test_parse_decimal_refusals(amount: Decimal) -> None:
    with pytest.raises(BadUserInput) as info:
        Money.parse(amount, "USD", field="input.amount")
    assert info.value.field == "input.amount"


@pytest.mark.parametrize("amount", [1.5, 10, True, None])
def test_parse_refuses_non_decimal_types(amount: object) -> None:
    with pytest.raises(BadUserInput, match="decimal string") as info:
        Money.parse(amount, "USD")  # type: ignore[arg-type]  # wrong on purpose
    assert info.value.field == "amount"


@pytest.mark.parametrize("currency", ["usd", "US", "USDD", "", "XAU", "XDR", "XXX", "HRK"])
def test_parse_refuses_unknown_currency_on_currency_field(currency: str) -> None:
    with pytest.raises(BadUserInput) as info:
        Money.parse("1.00", currency)
    assert info.value.field == "currency"


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (12550, "USD", "125.50"),
        (5, "USD", "0.05"),
        (0, "USD", "0.00"),
        (-5, "USD", "-0.05"),
        (-12550, "USD", "-125.50"),
        (100, "JPY", "100"),
        (-100, "JPY", "-100"),
        (1000, "BHD", "1.000"),
        (1, "CLF", "0.0001"),
    ],
)
def test_format(minor: int, currency: str, text: str) -> None:
    money = Money.from_minor(minor, currency)
    assert money.format() == text == format_minor(minor, currency)
    assert money.to_decimal() == Decimal(text)
    assert str(money.to_decimal()) == text
    assert str(money) == f"{text} {currency}"


def test_arithmetic_same_currency_only() -> None:
    a = Money(1000, "USD")
    assert a + Money(250, "USD") == Money(1250, "USD")
    assert a - Money(1250, "USD") == Money(-250, "USD")
    with pytest.raises(ValueError, match="EUR"):
        a + Money(1, "EUR")
    with pytest.raises(ValueError, match="EUR"):
        a - Money(1, "EUR")
    with pytest.raises(TypeError):
        a + 1  # wrong on purpose


def test_constructor_checks() -> None:
    with pytest.raises(TypeError):
        Money(True, "USD")
    with pytest.raises(TypeError):
        Money(Decimal(1), "USD")  # type: ignore[arg-type]  # wrong on purpose
    with pytest.raises(BadUserInput):
        Money(1, "usd")
    assert Money.from_minor(0, "USD").minor == 0


currencies = st.sampled_from(sorted(CURRENCY_EXPONENTS))
payment_minor = st.integers(min_value=1, max_value=MAX_MINOR_UNITS)


@given(minor=payment_minor, currency=currencies)
def test_parse_inverts_format(minor: int, currency: str) -> None:
    money = Money(minor, currency)
    assert Money.parse(money.format(), currency) == money
    assert Money.parse(money.to_decimal(), currency) == money


@given(minor=st.integers(min_value=-(10**20), max_value=10**20), currency=currencies)
def test_to_decimal_is_exact(minor: int, currency: str) -> None:
    value = Money(minor, currency).to_decimal()
    assert value.scaleb(CURRENCY_EXPONENTS[currency]) == minor
    assert -value.as_tuple().exponent == CURRENCY_EXPONENTS[currency]  # type: ignore[operator]


@given(minor=payment_minor, currency=currencies)
def test_extra_trailing_zero_is_refused(minor: int, currency: str) -> None:
    text = Money(minor, currency).format()
    padded = text + "0" if "." in text else text + ".0"
    with pytest.raises(BadUserInput):
        Money.parse(padded, currency)


# Every character Python counts as whitespace (str.isspace), plus the format characters that
# render as nothing (zero-width space, BOM), which no amount contains either.
_WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()] + ["\u200b", "\ufeff"]


@pytest.mark.parametrize("amount", ["  12.34", "12.34\u00a0", "\u200312.34", "12.34\n", "\t1",
                                    "12 .34", "1\u202f000.00", "\ufeff12.34", " -1"])
def test_whitespace_anywhere_is_refused_on_the_field(amount: str) -> None:
    with pytest.raises(BadUserInput) as refused:
        Money.parse(amount, "USD", field="input.amount")
    assert refused.value.field == "input.amount"


@given(minor=payment_minor, currency=currencies, space=st.sampled_from(_WHITESPACE),
       where=st.sampled_from(["before", "after", "inside"]))
def test_a_valid_amount_with_any_whitespace_is_refused(minor: int, currency: str, space: str,
                                                       where: str) -> None:
    text = Money(minor, currency).format()
    spaced = {"before": space + text, "after": text + space,
              "inside": text[:1] + space + text[1:]}[where]
    with pytest.raises(BadUserInput):
        Money.parse(spaced, currency)
