"""Samples for the unit tests: one place to build a PaymentRow, and settings naming servers
that are never reached."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from paystream.domain.entities import AccountRow, PaymentRow

SAMPLE_TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# Settings sections for ``Settings(**NOWHERE)``: what is required, pointing nowhere.
NOWHERE: dict[str, Any] = {
    "db": {"primary_url": "postgresql+asyncpg://nowhere/x"},
    "redis": {"url": "redis://nowhere:1/0"}, "kafka": {"bootstrap_servers": "nowhere:1"}}


def sample_payment(**changes: Any) -> PaymentRow:
    """A PENDING 0.01 USD payment between fresh ids at SAMPLE_TIME, with ``changes``."""
    row = PaymentRow(id=uuid.uuid4(), partner_id=uuid.uuid4(), idempotency_key="k",
                     request_hash="h", source_account_id=uuid.uuid4(),
                     destination_account_id=uuid.uuid4(), amount_minor=1, currency="USD",
                     reference=None, status="PENDING", failure_reason=None, version=1,
                     created_at=SAMPLE_TIME, updated_at=SAMPLE_TIME)
    return replace(row, **changes)


def sample_accounts(payment: PaymentRow) -> tuple[AccountRow, AccountRow]:
    """The payment's source and destination accounts, of fresh partners, at its time."""
    at = payment.created_at
    return (AccountRow(payment.source_account_id, uuid.uuid4(), "a", "USD", 0, 1, at, at),
            AccountRow(payment.destination_account_id, uuid.uuid4(), "b", "USD", 0, 1, at, at))
