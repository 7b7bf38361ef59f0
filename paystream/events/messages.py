"""Message schemas of the two topics, as JSON. Amounts are integer minor units.

One frozen dataclass per message, read and written by pydantic (a ``TypeAdapter`` per
message, built once): pydantic checks every field's type on decode, and a message that fails
is :class:`UndecodableMessage` (the worker dead-letters it, the status consumers skip it).
Construction from trusted rows is a plain dataclass call, with no validation cost. The
payment's and the accounts' fields are not spelled out here: the messages carry
:class:`~paystream.domain.entities.PaymentRow` and ``AccountRow`` snapshots, the one
definition of each.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError

from ..domain.entities import AccountRow, PaymentRow, payment_from_json
from ..domain.status import is_terminal

__all__ = ["COMMAND_TYPES", "CommandType", "PaymentCommand", "PaymentRequested", "PaymentStatusEvent",
           "RefundRequested", "UndecodableMessage", "decode_requested"]

# Strict: a JSON string is no integer and true is no amount. UUIDs and times still come as
# JSON strings, which strict mode accepts from JSON input.
_STRICT = ConfigDict(strict=True)


class UndecodableMessage(ValueError):
    """A message that is not valid JSON of the expected shape (goes to the dead-letter topic)."""


def _iso(value: str) -> str:
    datetime.fromisoformat(value)  # raises ValueError: not ISO 8601
    return value


IsoTime = Annotated[str, AfterValidator(_iso)]
"""A time kept as the ISO 8601 text it was sent as."""


def _reason(exc: ValidationError) -> str:
    """The first error as ``field: message``, without the input (it may be anything)."""
    error = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "message"
    return f"{where}: {error['msg']}"


def _object(raw: bytes | str | None) -> dict[str, Any]:
    try:
        return _OBJECT.validate_json(raw or b"")
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        if error["type"] == "json_invalid":
            raise UndecodableMessage(f"not JSON: {error['msg']}") from None
        raise UndecodableMessage("not a JSON object") from None


def _decode(adapter: TypeAdapter[Any], raw: bytes | str | None) -> Any:
    try:
        return adapter.validate_json(raw or b"")
    except ValidationError as exc:
        raise UndecodableMessage(_reason(exc)) from None


@dataclass(frozen=True, slots=True)
class PaymentRequested:
    """A createPayment accepted by the API: the payment as it was accepted (PENDING). The
    worker posts from its locked row and dead-letters a request that disagrees with it."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    # The payment's id beside it, as every message of the topic names it (the outbox's SQL
    # finds a request's payment by ``payload->>'payment_id'``).
    payment_id: uuid.UUID
    payment: PaymentRow
    type: Literal["payment.requested"] = "payment.requested"
    schema: Literal[2] = 2

    def __post_init__(self) -> None:
        _same_payment(self.payment_id, self.payment)

    @classmethod
    def of(cls, payment: PaymentRow) -> PaymentRequested:
        return cls(payment_id=payment.id, payment=payment)

    @property
    def source_account_id(self) -> uuid.UUID:
        return self.payment.source_account_id

    def encode(self) -> bytes:
        return _REQUESTED.dump_json(self)

    @classmethod
    def decode(cls, raw: bytes | None) -> PaymentRequested:
        data = _object(raw)
        if data.get("schema", 1) == 1 and data.get("type") == "payment.requested":
            return cls.of(_legacy_request(data))
        return _decode(_REQUESTED, raw)  # type: ignore[no-any-return]  # the adapter's type


def _same_payment(payment_id: uuid.UUID, payment: PaymentRow) -> None:
    if payment_id != payment.id:
        raise ValueError("payment_id is not the payment's id")


def _legacy_request(data: dict[str, Any]) -> PaymentRow:
    """Schema 1 (before this module was pydantic's) carried the payment's fields flat, under
    their own names but ``payment_id``, and none of its state: a PENDING version 1."""
    try:
        return payment_from_json({
            **data, "id": data.get("payment_id"), "status": "PENDING", "version": 1,
            "failure_reason": None, "updated_at": data.get("created_at")})
    except ValidationError as exc:
        raise UndecodableMessage(_reason(exc)) from None


CommandType = Literal["payment.capture_requested", "payment.cancel_requested"]
COMMAND_TYPES: tuple[CommandType, ...] = ("payment.capture_requested", "payment.cancel_requested")


@dataclass(frozen=True, slots=True)
class PaymentCommand:
    """A capturePayment or cancelPayment accepted by the API (also on ``payments.requested``,
    keyed by the source account, so it is consumed after the payment's own request).

    The worker acts on the locked payment row; ``amount_minor`` is the capture's (None: all of
    the authorization) and must agree with what the row recorded at acceptance."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    type: CommandType
    payment_id: uuid.UUID
    partner_id: uuid.UUID
    source_account_id: uuid.UUID
    amount_minor: int | None
    created_at: IsoTime
    schema: int = 1

    def encode(self) -> bytes:
        return _COMMAND.dump_json(self)


@dataclass(frozen=True, slots=True)
class RefundRequested:
    """A refundPayment accepted by the API (on ``payments.requested``, keyed by the payment's
    source account). The worker posts the locked refund row; the message must agree with it."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    refund_id: uuid.UUID
    payment_id: uuid.UUID
    partner_id: uuid.UUID
    source_account_id: uuid.UUID
    amount_minor: int
    created_at: IsoTime
    type: Literal["refund.requested"] = "refund.requested"
    schema: int = 1

    def encode(self) -> bytes:
        return _REFUND.dump_json(self)


def decode_requested(raw: bytes | None) -> PaymentRequested | PaymentCommand | RefundRequested:
    """A message of ``payments.requested``: a payment's request, a command on a payment, or a
    refund's request."""
    try:  # the common case, parsed once; anything else is told apart below
        return _REQUESTED.validate_json(raw or b"")
    except ValidationError:
        pass
    kind = _object(raw).get("type")
    if kind in COMMAND_TYPES:
        return _decode(_COMMAND, raw)  # type: ignore[no-any-return]  # the adapter's type
    if kind == "refund.requested":
        return _decode(_REFUND, raw)  # type: ignore[no-any-return]  # the adapter's type
    if kind != "payment.requested":
        raise UndecodableMessage("type: expected payment.requested, refund.requested or one of "
                                 + ", ".join(COMMAND_TYPES))
    return PaymentRequested.decode(raw)


@dataclass(frozen=True, slots=True)
class PaymentStatusEvent:
    """A payment's state after a change, with the accounts as the posting left them.

    ``payment.version`` increases per payment; account versions increase per posting on that
    account, so a consumer can drop anything older than what it has. The snapshots are what
    the cache stores, so a consumer can replace cache entries and render the payment without
    reading the database.
    """

    # Lax, unlike the requests: the snapshots are the cache's JSON form (times and ids as
    # strings), written by this code only. The payment's id is also named beside it, as in
    # every message (and in schema 1).
    payment_id: uuid.UUID
    payment: PaymentRow
    source_partner_id: uuid.UUID
    destination_partner_id: uuid.UUID
    # Both accounts after the posting; None on the PENDING event the API publishes (the
    # accounts did not change, and the API's read of them may be older than the cache's).
    accounts: tuple[AccountRow, ...] | None = None
    # The refund whose outcome this event announces (the payment's refunded amount changed,
    # or a refund failed), as ``db.refunds.RefundRow.to_json``.
    refund: dict[str, Any] | None = None
    # The event's place in the events feed (``domain.feed``), written in the transaction that
    # wrote the event.
    cursor: str | None = None
    # The W3C trace context the event travels with (``paystream.tracing``): not part of its
    # JSON, but of the message's headers and of its outbox row. None when untraced.
    trace: dict[str, str] | None = field(default=None, compare=False, repr=False)
    type: Literal["payment.status"] = "payment.status"
    schema: int = 2

    @classmethod
    def of(cls, payment: PaymentRow, source: AccountRow, destination: AccountRow, *,
           with_accounts: bool = True) -> PaymentStatusEvent:
        """The event for a payment's state; ``with_accounts`` False for the API's PENDING."""
        return cls(payment_id=payment.id, payment=payment, source_partner_id=source.partner_id,
                   destination_partner_id=destination.partner_id,
                   accounts=(source, destination) if with_accounts else None)

    @classmethod
    def pending(cls, payment: PaymentRow, source_partner_id: uuid.UUID,
                destination_partner_id: uuid.UUID) -> PaymentStatusEvent:
        """The API's PENDING event: no account states (see ``accounts``)."""
        return cls(payment_id=payment.id, payment=payment, source_partner_id=source_partner_id,
                   destination_partner_id=destination_partner_id)

    def __post_init__(self) -> None:
        _same_payment(self.payment_id, self.payment)

    # The payment's state, as every consumer names it.
    @property
    def version(self) -> int:
        return self.payment.version

    @property
    def status(self) -> str:
        return self.payment.status

    @property
    def terminal(self) -> bool:
        return is_terminal(self.payment.status)

    @property
    def account_ids(self) -> tuple[uuid.UUID, uuid.UUID]:
        return self.payment.source_account_id, self.payment.destination_account_id

    def encode(self) -> bytes:
        return _STATUS.dump_json(self, exclude={"trace"})

    def to_json_text(self) -> str:
        return self.encode().decode()

    def encode_with_cursor(self, encoded: bytes, cursor: str) -> bytes:
        """``replace(self, cursor=cursor).encode()``, made from ``encoded`` (this event's own
        encoding, without a cursor) instead of encoding it all again: the cursor is the
        third field from the end, so only the tail differs."""
        if encoded.endswith(_NO_CURSOR_TAIL):
            return b"".join((encoded[:-len(_NO_CURSOR_TAIL)], b',"cursor":',
                             json.dumps(cursor).encode(), _CURSOR_TAIL_REST))
        return replace(self, cursor=cursor).encode()  # another shape: encoded in full

    @classmethod
    def decode(cls, raw: bytes | str | None) -> PaymentStatusEvent:
        """An event of schema 2, or of schema 1 (whose flat copies of the payment's fields
        beside its snapshot are ignored)."""
        event: PaymentStatusEvent = _decode(_STATUS, raw)
        # A "trace" in the JSON is not the message's context (that comes in its headers).
        return event if event.trace is None else replace(event, trace=None)


_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
_REQUESTED = TypeAdapter(PaymentRequested)
_COMMAND = TypeAdapter(PaymentCommand)
_REFUND = TypeAdapter(RefundRequested)
_STATUS = TypeAdapter(PaymentStatusEvent)
# The end of a status event's JSON after its cursor (fields in declaration order).
_CURSOR_TAIL_REST = b',"type":"payment.status","schema":2}'
_NO_CURSOR_TAIL = b',"cursor":null' + _CURSOR_TAIL_REST


def encode_accepted(payment: PaymentRow, snapshot: bytes, source_partner_id: uuid.UUID,
                    destination_partner_id: uuid.UUID) -> tuple[bytes, bytes]:
    """A just-accepted payment's request and PENDING event, spliced around ``snapshot`` (the
    payment's own JSON, ``encode_payment``) instead of encoding the payment twice more: byte
    for byte ``PaymentRequested.of(payment).encode()`` and ``PaymentStatusEvent.of(payment,
    source, destination, with_accounts=False).encode()`` (tests/unit/test_lifecycle_messages.py)."""
    payment_id = b'"%b"' % str(payment.id).encode()
    request = b'{"payment_id":%b,"payment":%b,"type":"payment.requested","schema":2}' % (
        payment_id, snapshot)
    event = b'{"payment_id":%b,"payment":%b,"source_partner_id":"%b","destination_partner_id":' \
            b'"%b","accounts":null,"refund":null%b' % (
                payment_id, snapshot, str(source_partner_id).encode(),
                str(destination_partner_id).encode(), _NO_CURSOR_TAIL)
    return request, event
