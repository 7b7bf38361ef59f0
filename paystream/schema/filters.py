"""``PaymentFilter``: the input, and its validated form for the database (``db.payments``)."""

from __future__ import annotations

from datetime import UTC, datetime

import strawberry

from ..db.payments import NO_FILTER
from ..db.payments import PaymentFilter as Filter
from ..domain.errors import BadUserInput
from ..domain.metadata import validate_metadata_key
from ..domain.validation import validate_reference
from .enums import PaymentDirection, PaymentStatus


@strawberry.input(name="PaymentFilter", description="Every given condition must hold. Dates "
                  "are inclusive; metadataKey and metadataValue match one entry (either or "
                  "both).")
class PaymentFilterInput:
    status: PaymentStatus | None = None
    direction: PaymentDirection | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    reference: str | None = None
    metadata_key: str | None = None
    metadata_value: str | None = None


def payment_filter(given: PaymentFilterInput | None) -> Filter:
    """The filter checked: a condition that cannot be right is BAD_USER_INPUT on its field."""
    if given is None:
        return NO_FILTER
    created_from = instant(given.created_from, "filter.createdFrom")
    created_to = instant(given.created_to, "filter.createdTo")
    if created_from is not None and created_to is not None and created_from > created_to:
        raise BadUserInput("filter.createdTo must not be before filter.createdFrom",
                           field="filter.createdTo")
    if given.metadata_key is not None:
        validate_metadata_key(given.metadata_key, field="filter.metadataKey")
    if given.metadata_value is not None and len(given.metadata_value) > 500:
        raise BadUserInput("filter.metadataValue must be at most 500 characters",
                           field="filter.metadataValue")
    return Filter(
        status=given.status.value if given.status else None,
        direction=given.direction.value if given.direction else None,
        created_from=created_from, created_to=created_to,
        reference=validate_reference(given.reference, field="filter.reference"),
        metadata_key=given.metadata_key, metadata_value=given.metadata_value,
    )


def entry_range(from_: datetime | None, to: datetime | None) -> tuple[datetime | None,
                                                                       datetime | None]:
    """``Account.entries``' bounds checked the same way (on ``from`` and ``to``)."""
    start, end = instant(from_, "from"), instant(to, "to")
    if start is not None and end is not None and start > end:
        raise BadUserInput("to must not be before from", field="to")
    return start, end


def instant(value: datetime | None, field: str) -> datetime | None:
    """A DateTime argument in UTC; one without an offset, or past the years 1 to 9999 in UTC
    (where the driver would fail, as INTERNAL), is BAD_USER_INPUT on ``field``."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise BadUserInput(f"{field} must carry an offset", field=field)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise BadUserInput(f"{field} must lie between the years 1 and 9999 in UTC",
                           field=field) from None
