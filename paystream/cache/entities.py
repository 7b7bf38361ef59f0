"""How payments and accounts are stored in the cache: their JSON form (``domain.entities``)
under their version."""

from __future__ import annotations

from typing import Any

from ..domain.entities import (
    AccountRow,
    PaymentRow,
    account_from_json,
    account_json,
    payment_from_json,
    payment_json,
)

PAYMENT = "payment"
ACCOUNT = "account"

payment_from = payment_from_json
account_from = account_from_json


def payment_entry(row: PaymentRow) -> tuple[int, dict[str, Any]]:
    return row.version, payment_json(row)


def account_entry(row: AccountRow) -> tuple[int, dict[str, Any]]:
    return row.version, account_json(row)
