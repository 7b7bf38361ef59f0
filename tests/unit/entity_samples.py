"""A sample payment for the unit tests: one place to build a PaymentRow."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from paystream.domain.entities import PaymentRow

SAMPLE_TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def sample_payment(**changes: Any) -> PaymentRow:
    """A PENDING 0.01 USD payment between fresh ids at SAMPLE_TIME, with ``changes``."""
    row = PaymentRow(id=uuid.uuid4(), partner_id=uuid.uuid4(), idempotency_key="k",
                     request_hash="h", source_account_id=uuid.uuid4(),
                     destination_account_id=uuid.uuid4(), amount_minor=1, currency="USD",
                     reference=None, status="PENDING", failure_reason=None, version=1,
                     created_at=SAMPLE_TIME, updated_at=SAMPLE_TIME)
    return replace(row, **changes)
