"""How payments and accounts are stored in the cache."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import datetime
from typing import Any

from ..db.accounts import AccountRow
from ..db.payments import PaymentRow
from ..domain.metadata import metadata_from_json, metadata_json
from ..events.messages import PaymentStatusEvent

PAYMENT = "payment"
ACCOUNT = "account"


def _dump(row: PaymentRow | AccountRow) -> dict[str, Any]:
    # The rows are flat: a shallow walk of the fields. dataclasses.asdict deep-copies every
    # value, which was most of a 1,000-payment createPayments' time in the API.
    data = {field.name: getattr(row, field.name) for field in fields(row)}
    for name, value in data.items():
        if isinstance(value, uuid.UUID):
            data[name] = str(value)
        elif isinstance(value, datetime):
            data[name] = value.isoformat()
    # The stored form, as in the database and in status events: [{"key", "value"}, ...].
    data["metadata_entries"] = metadata_json(row.metadata_entries)
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
        # Entries cached before holds existed lack these (they live 24 h): their defaults.
        capture=bool(data.get("capture", True)),
        authorization_ttl_s=data.get("authorization_ttl_s"),
        authorization_expires_at=_instant(data.get("authorization_expires_at")),
        captured_minor=data.get("captured_minor"),
        refunded_minor=int(data.get("refunded_minor", 0)),
        # Absent from entries cached before metadata existed: none.
        metadata_entries=metadata_from_json(data.get("metadata_entries")),
    )


def _instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def account_from(data: dict[str, Any]) -> AccountRow:
    return AccountRow(
        id=uuid.UUID(data["id"]), partner_id=uuid.UUID(data["partner_id"]), name=data["name"],
        currency=data["currency"], balance_minor=int(data["balance_minor"]),
        version=int(data["version"]), created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
        held_minor=int(data.get("held_minor", 0)),  # absent from entries cached before holds
        metadata_entries=metadata_from_json(data.get("metadata_entries")),
    )


def status_event(payment: PaymentRow, source: AccountRow, destination: AccountRow, *,
                 with_accounts: bool = True) -> PaymentStatusEvent:
    """The event for a payment's state, carrying the same snapshots the cache stores.

    ``with_accounts`` is False for the API's PENDING event: the accounts did not change, and
    their balances as the API read them may already be older than the cache's.
    """
    return PaymentStatusEvent(
        payment_id=payment.id, version=payment.version, status=payment.status,
        failure_reason=payment.failure_reason, partner_id=payment.partner_id,
        source_account_id=payment.source_account_id,
        destination_account_id=payment.destination_account_id,
        source_partner_id=source.partner_id, destination_partner_id=destination.partner_id,
        amount_minor=payment.amount_minor, currency=payment.currency,
        reference=payment.reference, created_at=payment.created_at.isoformat(),
        updated_at=payment.updated_at.isoformat(),
        source_balance_minor=source.balance_minor if with_accounts else None,
        source_account_version=source.version if with_accounts else None,
        destination_balance_minor=destination.balance_minor if with_accounts else None,
        destination_account_version=destination.version if with_accounts else None,
        payment=_dump(payment),
        accounts=[_dump(source), _dump(destination)] if with_accounts else None,
    )


def event_rows(event: PaymentStatusEvent) -> tuple[PaymentRow | None, list[AccountRow]]:
    """The snapshots an event carries (none from an event published before they were added)."""
    payment = payment_from(event.payment) if event.payment else None
    return payment, [account_from(a) for a in event.accounts or ()]
