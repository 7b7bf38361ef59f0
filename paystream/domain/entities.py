"""The payment's and the account's shape, defined once.

The database reads these (``db`` selects their fields as columns, in order), the cache and the
status events store their JSON form (:func:`encode_payment` and back), the worker and the
services build new states of them with ``dataclasses.replace``, and the GraphQL types wrap them.
The JSON form is pydantic's, from the type annotations: nothing else spells the fields out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, TypeAdapter

from .metadata import Metadata, metadata_from_json, metadata_json

__all__ = ["AccountParty", "AccountRow", "PaymentRow", "account_from_json", "encode_account", "encode_payment",
           "field_names", "payment_from_json"]

StoredMetadata = Annotated[Metadata, BeforeValidator(metadata_from_json),
                           PlainSerializer(metadata_json)]
"""Metadata as the database, the cache and events keep it: ``[{"key", "value"}, ...]``."""


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """A payment as read, detached from any session (safe to cache)."""

    id: uuid.UUID
    partner_id: uuid.UUID
    idempotency_key: str
    request_hash: str
    source_account_id: uuid.UUID
    destination_account_id: uuid.UUID
    amount_minor: int
    currency: str
    reference: str | None
    status: str
    failure_reason: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    # Defaults: also what entries cached before a field existed get (they live 24 h).
    capture: bool = True  # False: an authorization (hold) until captured or canceled
    authorization_ttl_s: int | None = None
    authorization_expires_at: datetime | None = None  # while AUTHORIZED
    captured_minor: int | None = None  # set by a capture
    refunded_minor: int = 0  # the sum of SUCCEEDED refunds
    metadata_entries: StoredMetadata = ()  # the partner's (key, value) pairs, in its order

    def __post_init__(self) -> None:
        # Rows come with the stored JSON form (a list of objects, or its text).
        if not isinstance(self.metadata_entries, tuple):
            object.__setattr__(self, "metadata_entries", metadata_from_json(self.metadata_entries))

    @property
    def captured_amount_minor(self) -> int | None:
        """What the payment moved: the capture, or the whole amount of a transfer."""
        if self.status != "SUCCEEDED":
            return None
        return self.captured_minor if self.captured_minor is not None else self.amount_minor


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account as read, detached from any session (safe to cache)."""

    id: uuid.UUID
    partner_id: uuid.UUID
    name: str
    currency: str
    balance_minor: int
    version: int
    created_at: datetime
    updated_at: datetime
    held_minor: int = 0  # open holds; available = balance - held
    metadata_entries: StoredMetadata = ()  # the partner's (key, value) pairs (createAccount)

    def __post_init__(self) -> None:
        if not isinstance(self.metadata_entries, tuple):
            object.__setattr__(self, "metadata_entries", metadata_from_json(self.metadata_entries))

    @property
    def available_minor(self) -> int:
        return self.balance_minor - self.held_minor


@dataclass(frozen=True, slots=True)
class AccountParty:
    """What never changes about an account: its owner and its currency. Accounts are never
    deleted, moved to another partner or re-denominated, so a process may keep these for good
    (createPayment checks a payment's parties against them without reading the account)."""

    id: uuid.UUID
    partner_id: uuid.UUID
    currency: str

    @classmethod
    def of(cls, row: AccountRow) -> AccountParty:
        return cls(row.id, row.partner_id, row.currency)


def field_names(entity: type[PaymentRow | AccountRow]) -> tuple[str, ...]:
    """The fields in declaration order: the columns a query selects to build one."""
    return tuple(field.name for field in fields(entity))


# Built once; pydantic-core does the conversion (about 2.5x faster than the hand-written
# mapping it replaced, measured on a 20-field payment).
_PAYMENT = TypeAdapter(PaymentRow)
_ACCOUNT = TypeAdapter(AccountRow)


def encode_payment(row: PaymentRow) -> bytes:
    """The payment's JSON form, straight from pydantic-core to bytes (about 3x cheaper than
    building a mapping and encoding it)."""
    return _PAYMENT.dump_json(row)


def payment_from_json(data: Any) -> PaymentRow:
    return _PAYMENT.validate_python(data)


def encode_account(row: AccountRow) -> bytes:
    """The account's JSON form (as :func:`encode_payment`)."""
    return _ACCOUNT.dump_json(row)


def account_from_json(data: Any) -> AccountRow:
    return _ACCOUNT.validate_python(data)
