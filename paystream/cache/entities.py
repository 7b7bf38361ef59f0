"""How payments and accounts are stored in the cache: their JSON form (``domain.entities``)
under their version."""

from __future__ import annotations

from ..domain.entities import (
    AccountRow,
    PaymentRow,
    account_from_json,
    encode_account,
    encode_payment,
    payment_from_json,
)

PAYMENT = "payment"
ACCOUNT = "account"

payment_from = payment_from_json
account_from = account_from_json


def payment_entry(row: PaymentRow) -> tuple[int, bytes]:
    return row.version, encode_payment(row)


def account_entry(row: AccountRow) -> tuple[int, bytes]:
    return row.version, encode_account(row)
