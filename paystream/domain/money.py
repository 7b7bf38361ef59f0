"""Exact money: integer minor units plus an ISO 4217 currency.

Amounts never pass through ``float``. Partners send decimal strings ("125.50"); they are
checked digit by digit and turned into an ``int`` of minor units, which is what the ledger,
the database and the events carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from paystream.domain.currency import currency_exponent
from paystream.domain.errors import BadUserInput

__all__ = ["MAX_MINOR_UNITS", "Money", "format_minor"]

MAX_MINOR_UNITS = 10**15
"""Largest amount of one payment, in minor units (DESIGN.md section 4)."""

# ASCII digits only: str.isdigit() and \d would accept other scripts' digits ("١٢٣").
_PLAIN_DECIMAL = re.compile(r"([0-9]+)(?:\.([0-9]+))?", re.ASCII)
# MAX_MINOR_UNITS has 16 digits; longer integer parts are refused before int() sees them,
# which also keeps Python's int-from-string digit limit out of reach.
_MAX_INTEGER_DIGITS = len(str(MAX_MINOR_UNITS))


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: ``minor`` units of ``currency`` (125.50 USD is ``Money(12550, "USD")``).

    The currency must be a known ISO 4217 code (see :mod:`paystream.domain.currency`);
    ``minor`` may be zero or negative, since balances and differences are Money too.
    """

    minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; Money(True, "USD") is a bug, not one cent.
        if not isinstance(self.minor, int) or isinstance(self.minor, bool):
            raise TypeError(f"Money.minor must be an int, not {type(self.minor).__name__}")
        currency_exponent(self.currency)

    @classmethod
    def parse(cls, amount: str | Decimal, currency: str, *, field: str = "amount") -> Money:
        """Parse a payment amount exactly; every refusal is :class:`BadUserInput` on ``field``.

        A string must be plain decimal notation, ``^[0-9]+(\\.[0-9]+)?$`` exactly: no
        whitespace anywhere (not even around it: "  12.34" or "12.34" followed by a
        no-break space is a client bug to report, not to guess at), no sign, exponent,
        underscores, non-ASCII digits, NaN or Infinity. A :class:`~decimal.Decimal` must be finite; its exponent
        notation is irrelevant, only its value and written decimals count.

        The amount must be greater than 0 and at most :data:`MAX_MINOR_UNITS` minor units.
        It may carry at most as many decimals as the currency's exponent, *counting
        trailing zeros*: "10.5" and "10.50" are fine for USD, "10.500" is not, and "100.0"
        is refused for JPY. Accepting "100.0" would be exact, but "JPY takes no decimals"
        is the clearer rule for partners, and it keeps one request one spelling.

        Currency errors (unknown code) are reported on ``field="currency"``.
        """
        minor = _minor_or_zero(amount, currency, field)
        if minor == 0:
            raise BadUserInput(f"{field} must be greater than 0", field=field)
        if minor > MAX_MINOR_UNITS:
            raise _too_large(currency, field)
        return cls(minor, currency)

    @classmethod
    def parse_balance(cls, amount: str | Decimal, currency: str, *,
                      field: str = "balance") -> Money:
        """An opening balance: exactly as :meth:`parse`, except that zero ("0", "0.00") is
        allowed."""
        if _minor_or_zero(amount, currency, field) == 0:
            return cls(0, currency)
        return cls.parse(amount, currency, field=field)

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        """Wrap an integer number of minor units (no sign check: balances may be 0)."""
        return cls(minor, currency)

    def to_decimal(self) -> Decimal:
        """The exact value, with as many decimals as the currency's exponent."""
        # From the formatted string: exact, and independent of the decimal context.
        return Decimal(self.format())

    def format(self) -> str:
        """Plain decimal notation: "125.50" USD, "100" JPY, "1.000" BHD, "-0.05" USD."""
        return format_minor(self.minor, self.currency)

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(self.minor + other.minor, self._same_currency(other, "add"))

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(self.minor - other.minor, self._same_currency(other, "subtract"))

    def _same_currency(self, other: Money, verb: str) -> str:
        if other.currency != self.currency:
            raise ValueError(f"cannot {verb} {other.currency} and {self.currency}")
        return self.currency


def _minor_or_zero(amount: str | Decimal, currency: str, field: str) -> int:
    exponent = currency_exponent(currency)
    if isinstance(amount, Decimal):
        return _minor_from_decimal(amount, currency, exponent, field)
    if isinstance(amount, str):
        return _minor_from_str(amount, currency, exponent, field)
    # JSON numbers arrive as float or int; floats are inexact, so the contract is a decimal
    # string and anything else is refused rather than converted.
    raise BadUserInput(f'{field} must be a decimal string such as "125.50"', field=field)


def format_minor(minor: int, currency: str) -> str:
    """Format integer minor units of ``currency`` in plain decimal notation ("-12.05")."""
    exponent = currency_exponent(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{exponent}d}"


def _minor_from_str(amount: str, currency: str, exponent: int, field: str) -> int:
    # Not stripped: whitespace of any kind (NBSP, EM SPACE, newlines) is refused with the rest.
    text = amount
    # "-5" gets the positivity message, which says more than "not a decimal".
    negative = text.startswith("-")
    match = _PLAIN_DECIMAL.fullmatch(text[1:] if negative else text)
    if match is None:
        raise BadUserInput(f'{field} must be a plain decimal number such as "125.50"', field=field)
    if negative:
        raise BadUserInput(f"{field} must be greater than 0", field=field)
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > exponent:
        raise _too_many_decimals(currency, exponent, field)
    if len(whole.lstrip("0")) > _MAX_INTEGER_DIGITS:
        raise _too_large(currency, field)
    return int(whole + fraction.ljust(exponent, "0"))


def _minor_from_decimal(amount: Decimal, currency: str, exponent: int, field: str) -> int:
    if not amount.is_finite():
        raise BadUserInput(f"{field} must be a finite number", field=field)
    if amount.is_signed():  # also catches Decimal("-0")
        raise BadUserInput(f"{field} must be greater than 0", field=field)
    if amount.is_zero():
        return 0
    _, digits, exp = amount.as_tuple()
    assert isinstance(exp, int)  # finite, so never "n", "N" or "F"
    if exp < -exponent:
        raise _too_many_decimals(currency, exponent, field)
    # adjusted() is the power of ten of the leading digit; checking it first keeps
    # Decimal("1E+999999") from being expanded into a huge int.
    if amount.adjusted() + exponent >= _MAX_INTEGER_DIGITS:
        raise _too_large(currency, field)
    # exp >= -exponent here, so the padding is zero or more zeros: exact.
    return int("".join(map(str, digits)) + "0" * (exp + exponent))


def _too_many_decimals(currency: str, exponent: int, field: str) -> BadUserInput:
    if exponent == 0:
        return BadUserInput(f"{currency} takes no decimals", field=field)
    plural = "decimal" if exponent == 1 else "decimals"
    return BadUserInput(f"{currency} takes at most {exponent} {plural}", field=field)


def _too_large(currency: str, field: str) -> BadUserInput:
    limit = format_minor(MAX_MINOR_UNITS, currency)
    return BadUserInput(f"{field} must be at most {limit} {currency}", field=field)
