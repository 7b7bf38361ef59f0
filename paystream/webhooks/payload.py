"""What a webhook says: the event envelope and the payment (or refund) as one partner may see
it, with the field names and value formats of the GraphQL types (``schema/types.py``): amounts
as Decimal strings, times as ISO 8601 with offset, and a counterparty's account with its id,
name and currency but no balance, exactly as a query by that partner shows it (a test compares
the two)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

from ..domain.entities import AccountRow, PaymentRow
from ..domain.money import format_minor
from ..domain.webhooks import event_id, event_type
from ..events.messages import PaymentStatusEvent


def _money(minor: int | None, currency: str) -> str | None:
    return None if minor is None else format_minor(minor, currency)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def account_view(account: AccountRow, viewer: uuid.UUID) -> dict[str, Any]:
    owner = account.partner_id == viewer
    return {
        "id": str(account.id), "name": account.name, "currency": account.currency,
        "balance": _money(account.balance_minor, account.currency) if owner else None,
        "availableBalance": _money(account.available_minor, account.currency) if owner else None,
    }


def payment_view(payment: PaymentRow, accounts: dict[uuid.UUID, AccountRow],
                 viewer: uuid.UUID) -> dict[str, Any]:
    currency = payment.currency
    return {
        "id": str(payment.id), "status": payment.status,
        "amount": _money(payment.amount_minor, currency), "currency": currency,
        "sourceAccount": account_view(accounts[payment.source_account_id], viewer),
        "destinationAccount": account_view(accounts[payment.destination_account_id], viewer),
        "reference": payment.reference, "failureReason": payment.failure_reason,
        "createdAt": _time(payment.created_at), "updatedAt": _time(payment.updated_at),
        "capturedAmount": _money(payment.captured_amount_minor, currency),
        "authorizationExpiresAt": (_time(payment.authorization_expires_at)
                                   if payment.status == "AUTHORIZED" else None),
        "amountRefunded": _money(payment.refunded_minor, currency),
    }


def refund_view(refund: dict[str, Any], payment: dict[str, Any]) -> dict[str, Any]:
    """A refund as ``db.refunds.RefundRow.to_json`` carries it, in GraphQL's shape."""
    return {
        "id": refund["id"], "amount": _money(int(refund["amount_minor"]), payment["currency"]),
        "status": refund["status"], "reason": refund.get("reason"),
        "failureReason": refund.get("failure_reason"), "createdAt": refund["created_at"],
        "updatedAt": refund["updated_at"], "payment": payment,
    }


def event_cursor(created_at: str, event: uuid.UUID) -> str:
    """The cursor of an event published before the events feed existed (its time and id):
    events carry their feed cursor (``PaymentStatusEvent.cursor``), which the body sends
    instead, so that ``events(after:)`` and ``accountActivity(after:)`` resume from it."""
    return base64.urlsafe_b64encode(f"{created_at}|{event}".encode()).decode().rstrip("=")


def kind_of(event: PaymentStatusEvent) -> str:
    refund_status = str(event.refund["status"]) if event.refund else None
    return event_type(event.status, refund_status)


def webhook_body(event: PaymentStatusEvent, payment: PaymentRow,
                 accounts: dict[uuid.UUID, AccountRow], viewer: uuid.UUID) -> str:
    """The JSON body sent to ``viewer``'s endpoints for ``event``: ``id``, ``type``,
    ``createdAt``, ``cursor`` and ``data`` (the payment, or the refund with its payment)."""
    identity = event_id(event.payment_id, event.version)
    created_at = payment.updated_at.isoformat()
    data = payment_view(payment, accounts, viewer)
    if event.refund:
        data = refund_view(event.refund, data)
    envelope = {"id": str(identity), "type": kind_of(event), "createdAt": created_at,
                "cursor": event.cursor or event_cursor(created_at, identity), "data": data}
    return json.dumps(envelope, separators=(",", ":"))


__all__ = ["account_view", "event_cursor", "kind_of", "payment_view", "refund_view",
           "webhook_body"]
