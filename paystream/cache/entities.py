"""How payments and accounts are stored in the cache."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from ..db.accounts import AccountRow
from ..db.payments import PaymentRow

PAYMENT = "payment"
ACCOUNT = "account"


def _dump(row: PaymentRow | AccountRow) -> dict[str, Any]:
    data = asdict(row)
    for name, value in data.items():
        if isinstance(value, uuid.UUID):
            data[name] = str(value)
        elif isinstance(value, datetime):
            data[name] = value.isoformat()
    return data


def payment_entry(row: PaymentRow) -> tuple[int, dict[str, Any]]:
    return row.version, _dump(row)


def account_entry(row: AccountRow) -> tuple[int, dict[str, Any]]:
    return row.version, _dump(row)


def payment_from(data: dict[str, Any]) -> PaymentRow:
    return PaymentRow(
        id=uuid.UUID(data["id"]), partner_id=uuid.UUID(data["partner_id"]),
        idempotency_key=data["idempotency_key"], request_hash=data["request_hash"],
        source_account_id=uuid.UUID(data["source_account_id"]),
        destination_account_id=uuid.UUID(data["destination_account_id"]),
        amount_minor=int(data["amount_minor"]), currency=data["currency"],
        reference=data["reference"], status=data["status"], failure_reason=data["failure_reason"],
        version=int(data["version"]), created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
    )


def account_from(data: dict[str, Any]) -> AccountRow:
    return AccountRow(
        id=uuid.UUID(data["id"]), partner_id=uuid.UUID(data["partner_id"]), name=data["name"],
        currency=data["currency"], balance_minor=int(data["balance_minor"]),
        version=int(data["version"]), created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
    )
