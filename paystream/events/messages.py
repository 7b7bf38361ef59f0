"""Message schemas of the two topics, as JSON. Amounts are integer minor units."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from ..domain.status import is_terminal


class UndecodableMessage(ValueError):
    """A message that is not valid JSON of the expected shape (goes to the dead-letter topic)."""


def _uuid(data: dict[str, Any], name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(data[name]))
    except (KeyError, ValueError) as exc:
        raise UndecodableMessage(f"{name}: {exc!s}") from None


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UndecodableMessage(f"{name}: expected an integer")
    return value


def _str(data: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise UndecodableMessage(f"{name}: expected a string")
    return value


def _loads(raw: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UndecodableMessage(f"not JSON: {exc!s}") from None
    if not isinstance(data, dict):
        raise UndecodableMessage("not a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class PaymentRequested:
    """A createPayment accepted by the API; everything the worker needs to post it."""

    payment_id: uuid.UUID
    partner_id: uuid.UUID
    idempotency_key: str
    request_hash: str
    source_account_id: uuid.UUID
    destination_account_id: uuid.UUID
    amount_minor: int
    currency: str
    reference: str | None
    created_at: str  # ISO 8601

    def encode(self) -> bytes:
        data = {f.name: getattr(self, f.name) for f in fields(self)}  # flat: no deep copy
        for name in ("payment_id", "partner_id", "source_account_id", "destination_account_id"):
            data[name] = str(data[name])
        data["type"] = "payment.requested"
        data["schema"] = 1
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> PaymentRequested:
        data = _loads(raw)
        if data.get("type") != "payment.requested":
            raise UndecodableMessage("type: expected payment.requested")
        created_at = _str(data, "created_at") or ""
        try:
            datetime.fromisoformat(created_at)
        except ValueError:
            raise UndecodableMessage("created_at: not ISO 8601") from None
        return cls(
            payment_id=_uuid(data, "payment_id"),
            partner_id=_uuid(data, "partner_id"),
            idempotency_key=_str(data, "idempotency_key") or "",
            request_hash=_str(data, "request_hash") or "",
            source_account_id=_uuid(data, "source_account_id"),
            destination_account_id=_uuid(data, "destination_account_id"),
            amount_minor=_int(data, "amount_minor"),
            currency=_str(data, "currency") or "",
            reference=_str(data, "reference", optional=True),
            created_at=created_at,
        )


COMMAND_TYPES = ("payment.capture_requested", "payment.cancel_requested")


@dataclass(frozen=True, slots=True)
class PaymentCommand:
    """A capturePayment or cancelPayment accepted by the API (also on ``payments.requested``,
    keyed by the source account, so it is consumed after the payment's own request).

    The worker acts on the locked payment row; ``amount_minor`` is the capture's (None: all of
    the authorization) and must agree with what the row recorded at acceptance."""

    type: str  # one of COMMAND_TYPES
    payment_id: uuid.UUID
    partner_id: uuid.UUID
    source_account_id: uuid.UUID
    amount_minor: int | None
    created_at: str  # ISO 8601

    def encode(self) -> bytes:
        data = asdict(self)
        for name in ("payment_id", "partner_id", "source_account_id"):
            data[name] = str(data[name])
        data["schema"] = 1
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PaymentCommand:
        kind = data.get("type")
        if kind not in COMMAND_TYPES:
            raise UndecodableMessage(f"type: expected one of {', '.join(COMMAND_TYPES)}")
        amount = data.get("amount_minor")
        if amount is not None:
            amount = _int(data, "amount_minor")
        created_at = _str(data, "created_at") or ""
        try:
            datetime.fromisoformat(created_at)
        except ValueError:
            raise UndecodableMessage("created_at: not ISO 8601") from None
        return cls(type=str(kind), payment_id=_uuid(data, "payment_id"),
                   partner_id=_uuid(data, "partner_id"),
                   source_account_id=_uuid(data, "source_account_id"), amount_minor=amount,
                   created_at=created_at)


@dataclass(frozen=True, slots=True)
class RefundRequested:
    """A refundPayment accepted by the API (on ``payments.requested``, keyed by the payment's
    source account). The worker posts the locked refund row; the message must agree with it."""

    refund_id: uuid.UUID
    payment_id: uuid.UUID
    partner_id: uuid.UUID
    source_account_id: uuid.UUID
    amount_minor: int
    created_at: str  # ISO 8601

    def encode(self) -> bytes:
        data: dict[str, Any] = {name: str(value) if isinstance(value, uuid.UUID) else value
                                for name, value in asdict(self).items()}
        data["type"] = "refund.requested"
        data["schema"] = 1
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RefundRequested:
        if data.get("type") != "refund.requested":
            raise UndecodableMessage("type: expected refund.requested")
        created_at = _str(data, "created_at") or ""
        try:
            datetime.fromisoformat(created_at)
        except ValueError:
            raise UndecodableMessage("created_at: not ISO 8601") from None
        return cls(refund_id=_uuid(data, "refund_id"), payment_id=_uuid(data, "payment_id"),
                   partner_id=_uuid(data, "partner_id"),
                   source_account_id=_uuid(data, "source_account_id"),
                   amount_minor=_int(data, "amount_minor"), created_at=created_at)


def decode_requested(raw: bytes | None) -> PaymentRequested | PaymentCommand | RefundRequested:
    """A message of ``payments.requested``: a payment's request, a command on a payment, or a
    refund's request."""
    data = _loads(raw)
    if data.get("type") in COMMAND_TYPES:
        return PaymentCommand.from_json(data)
    if data.get("type") == "refund.requested":
        return RefundRequested.from_json(data)
    return PaymentRequested.decode(raw)


@dataclass(frozen=True, slots=True)
class PaymentStatusEvent:
    """A payment's state after a change, with the balances the posting left.

    ``version`` increases per payment; account versions increase per posting on that account,
    so a consumer can drop anything older than what it has.
    """

    payment_id: uuid.UUID
    version: int
    status: str
    failure_reason: str | None
    partner_id: uuid.UUID
    source_account_id: uuid.UUID
    destination_account_id: uuid.UUID
    source_partner_id: uuid.UUID
    destination_partner_id: uuid.UUID
    amount_minor: int
    currency: str
    reference: str | None
    created_at: str
    updated_at: str
    source_balance_minor: int | None = None
    source_account_version: int | None = None
    destination_balance_minor: int | None = None
    destination_account_version: int | None = None
    # Whole snapshots as the cache stores them (``cache.entities``), so a consumer can replace
    # cache entries and render the payment without reading the database. ``accounts`` is
    # absent on the PENDING event the API publishes.
    payment: dict[str, Any] | None = None
    accounts: list[dict[str, Any]] | None = None
    # The refund whose outcome this event announces (the payment's refunded amount changed,
    # or a refund failed), as ``db.refunds.RefundRow.to_json``.
    refund: dict[str, Any] | None = None
    # The event's place in the events feed (``domain.feed``), written in the transaction that
    # wrote the event. Absent from events published before the feed existed.
    cursor: str | None = None
    # The W3C trace context the event travels with (``paystream.tracing``): not part of its
    # JSON, but of the message's headers and of its outbox row. None when untraced.
    trace: dict[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return is_terminal(self.status)

    @property
    def account_ids(self) -> tuple[uuid.UUID, uuid.UUID]:
        return self.source_account_id, self.destination_account_id

    def to_json(self) -> dict[str, Any]:
        # Shallow: the snapshots are plain JSON already and are only serialized from here
        # (asdict would deep-copy each of them once per event).
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "trace"}
        for name, value in data.items():
            if isinstance(value, uuid.UUID):
                data[name] = str(value)
        data["type"] = "payment.status"
        return data

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PaymentStatusEvent:
        if data.get("type") != "payment.status":
            raise UndecodableMessage("type: expected payment.status")
        uuids = ("payment_id", "partner_id", "source_account_id", "destination_account_id",
                 "source_partner_id", "destination_partner_id")
        kwargs = {name: data.get(name) for name in cls.__dataclass_fields__ if name != "trace"}
        for name in uuids:
            kwargs[name] = _uuid(data, name)
        _int(data, "version")
        if not isinstance(data.get("payment"), dict | None):
            raise UndecodableMessage("payment: expected an object")
        if not isinstance(data.get("accounts"), list | None):
            raise UndecodableMessage("accounts: expected a list")
        if not isinstance(data.get("refund"), dict | None):
            raise UndecodableMessage("refund: expected an object")
        _str(data, "cursor", optional=True)
        return cls(**kwargs)  # type: ignore[arg-type]  # each field checked above

    @classmethod
    def decode(cls, raw: bytes | None) -> PaymentStatusEvent:
        return cls.from_json(_loads(raw))
