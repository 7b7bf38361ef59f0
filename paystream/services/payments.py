"""createPayment: validate, accept durably, answer; the request is produced after.

Acceptance is the primary's commit of the PENDING payment together with its
``payments.requested`` message (the request outbox). The unique index on (partner,
idempotency key) decides between concurrent duplicates: exactly one creates the payment, the
others find it. After the commit the message goes to the process's publisher, which produces
it in a batch with others; whatever is not produced (broker down, process killed) the
worker's relay publishes. So UNAVAILABLE means exactly "the primary did not commit: nothing
was recorded", and a broker outage delays payments instead of refusing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ..config import Settings
from ..db import Database
from ..domain.currency import currency_exponent
from ..domain.entities import AccountParty, PaymentRow
from ..domain.errors import BadUserInput, IdempotencyConflict, PaystreamError, QueryTooComplex
from ..domain.ledger import SYSTEM_PARTNER_ID
from ..domain.lifecycle import validate_authorization_ttl
from ..domain.metadata import Metadata, validate_metadata
from ..domain.money import Money
from ..domain.validation import parse_account_id, validate_idempotency_key, validate_reference
from ..tracing import current_carrier
from .acceptance import Acceptance, Draft
from .auth import WRITE, Caller
from .publisher import Publisher
from .reads import Reader
from .status_hub import StatusHub

log = logging.getLogger("paystream.payments")


@dataclass(frozen=True, slots=True)
class CreatePayment:
    """The createPayment input as the client sent it."""

    idempotency_key: str
    source_account_id: str
    destination_account_id: str
    amount: str | Decimal
    currency: str
    reference: str | None = None
    capture: bool = True  # False: authorize (hold) until capturePayment or cancelPayment
    authorization_ttl_seconds: int | None = None
    metadata: Sequence[tuple[str, str]] | None = None  # (key, value) pairs, validated here


def request_hash(partner_id: uuid.UUID, source: uuid.UUID, destination: uuid.UUID,
                 money: Money, reference: str | None, *, capture: bool = True,
                 authorization_ttl_s: int | None = None, metadata: Metadata = ()) -> str:
    """What makes two requests "the same" for idempotency: every field but the key."""
    fields: list[object] = [str(partner_id), str(source), str(destination), money.minor,
                            money.currency, reference]
    if not capture:
        # Only for authorizations: a transfer's hash stays what it was before holds existed,
        # so a retry across the upgrade is still recognised as the same request.
        fields += [False, authorization_ttl_s]
    if metadata:
        # Likewise only when given: payments without metadata keep their hashes.
        fields.append({"metadata": [list(pair) for pair in metadata]})
    canonical = json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class PaymentService:
    def __init__(self, settings: Settings, db: Database, reader: Reader, publisher: Publisher,
                 hub: StatusHub | None = None) -> None:
        self._settings = settings
        self._reader = reader
        self._acceptance = Acceptance(settings, db, reader, publisher, hub)

    async def create(self, caller: Caller, request: CreatePayment) -> PaymentRow:
        caller.require(WRITE)
        parsed = _parse(request)
        # Only the accounts' owners and currencies matter here, and they never change.
        accounts = await self._reader.account_parties([parsed.source_id, parsed.destination_id])
        source, destination = _check_accounts(caller, parsed, accounts)
        draft = _draft(caller, parsed, datetime.now(UTC))
        # Committed with whatever other createPayment calls wait meanwhile (acceptance.py);
        # the operation's trace goes with its request, through the outbox if need be.
        row, created = await self._acceptance.accept(
            Draft(draft, source, destination, current_carrier()))
        if not created:
            # Its request was committed with it the first time: nothing to produce again.
            _check_replay(row, draft)
        return row

    async def create_many(self, caller: Caller,
                          requests: Sequence[CreatePayment]) -> list[PaymentRow | PaystreamError]:
        """createPayments: each request validated and answered on its own, in input order (the
        payment, or the error createPayment would have raised for it); the good ones accepted
        in one transaction (one INSERT of the payments, one of their outbox requests) and
        handed to the publisher as one group. A key repeated within the request is refused
        on its repetitions. Raises only for the whole call: a missing scope, more than
        ``max_bulk_payments`` requests, or the primary not committing (UNAVAILABLE: nothing
        of the call was recorded)."""
        caller.require(WRITE)
        check_batch_size(len(requests), self._settings.limits.max_bulk_payments)
        answers: list[PaymentRow | PaystreamError | None] = [None] * len(requests)
        parsed: dict[int, _Parsed] = {}
        first_of_key: dict[str, int] = {}
        for index, request in enumerate(requests):
            try:
                # The key first, as createPayment checks it first: a repetition is refused
                # whatever else is wrong with it or with the input that used the key before.
                key = validate_idempotency_key(request.idempotency_key)
                earlier = first_of_key.setdefault(key, index)
                if earlier != index:
                    raise BadUserInput(
                        f"idempotencyKey is used by inputs[{earlier}] of this request already",
                        field="idempotencyKey", extensions={"reason": "DUPLICATE_IDEMPOTENCY_KEY"})
                item = _parse(request)
            except PaystreamError as exc:
                answers[index] = exc
                continue
            parsed[index] = item
        accounts = await self._reader.account_parties(
            sorted({i for p in parsed.values() for i in (p.source_id, p.destination_id)}))
        now = datetime.now(UTC)
        drafts: dict[int, tuple[PaymentRow, AccountParty, AccountParty]] = {}
        for index, item in parsed.items():
            try:
                source, destination = _check_accounts(caller, item, accounts)
            except PaystreamError as exc:
                answers[index] = exc
                continue
            drafts[index] = (_draft(caller, item, now), source, destination)
        if drafts:
            await self._accept_many(drafts, answers)
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]  # every slot is filled above

    async def _accept_many(self, drafts: dict[int, tuple[PaymentRow, AccountParty, AccountParty]],
                           answers: list[PaymentRow | PaystreamError | None]) -> None:
        trace = current_carrier()
        stored = await self._acceptance.accept_many(
            [Draft(*parts, trace) for parts in drafts.values()])
        for index, (draft, _, _) in drafts.items():
            row, created = stored[draft.partner_id, draft.idempotency_key]
            try:
                if not created:
                    _check_replay(row, draft)
            except PaystreamError as exc:
                answers[index] = exc
                continue
            answers[index] = row


def check_batch_size(size: int, maximum: int) -> None:
    """createPayments takes at most ``maximum`` inputs (QUERY_TOO_COMPLEX, limit "batch",
    as the gateway's other request limits report)."""
    if size > maximum:
        raise QueryTooComplex(f"createPayments takes at most {maximum} inputs, got {size}",
                              extensions={"limit": "batch", "max": maximum})


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A createPayment input checked on its own (no reads yet)."""

    key: str
    reference: str | None
    source_id: uuid.UUID
    destination_id: uuid.UUID
    money: Money
    capture: bool
    ttl: int | None
    metadata: Metadata


def _parse(request: CreatePayment) -> _Parsed:
    key = validate_idempotency_key(request.idempotency_key)
    reference = validate_reference(request.reference)
    source_id = parse_account_id(request.source_account_id, field="sourceAccountId")
    destination_id = parse_account_id(request.destination_account_id, field="destinationAccountId")
    currency_exponent(request.currency)
    money = Money.parse(request.amount, request.currency, field="amount")
    ttl = validate_authorization_ttl(request.authorization_ttl_seconds, capture=request.capture)
    metadata = validate_metadata(request.metadata)
    if source_id == destination_id:
        raise BadUserInput("destinationAccountId must differ from sourceAccountId",
                           field="destinationAccountId")
    return _Parsed(key, reference, source_id, destination_id, money, request.capture, ttl,
                   metadata)


def _check_accounts(caller: Caller, item: _Parsed,
                    accounts: Mapping[uuid.UUID, AccountParty]
                    ) -> tuple[AccountParty, AccountParty]:
    """The source and destination accounts, if the caller may pay between them."""
    source, destination = accounts.get(item.source_id), accounts.get(item.destination_id)
    # A foreign source account is reported exactly like a missing one.
    if source is None or not caller.owns(source.partner_id):
        raise BadUserInput("sourceAccountId: no such account", field="sourceAccountId")
    # Settlement accounts are the ledger's edge, not a party to payments.
    if destination is None or destination.partner_id == SYSTEM_PARTNER_ID:
        raise BadUserInput("destinationAccountId: no such account", field="destinationAccountId")
    money = item.money
    if source.currency != money.currency or destination.currency != money.currency:
        raise BadUserInput(
            f"currency: payment is {money.currency}, source account is {source.currency},"
            f" destination account is {destination.currency}",
            field="currency", extensions={"reason": "CURRENCY_MISMATCH"},
        )
    return source, destination


def _draft(caller: Caller, item: _Parsed, now: datetime) -> PaymentRow:
    return PaymentRow(
        id=uuid.uuid4(), partner_id=caller.partner_id, idempotency_key=item.key,
        request_hash=request_hash(caller.partner_id, item.source_id, item.destination_id,
                                  item.money, item.reference, capture=item.capture,
                                  authorization_ttl_s=item.ttl, metadata=item.metadata),
        source_account_id=item.source_id, destination_account_id=item.destination_id,
        amount_minor=item.money.minor, currency=item.money.currency, reference=item.reference,
        status="PENDING", failure_reason=None, version=1, created_at=now, updated_at=now,
        capture=item.capture, authorization_ttl_s=item.ttl, metadata_entries=item.metadata,
    )


def _check_replay(existing: PaymentRow, draft: PaymentRow) -> None:
    """An existing payment answers a retry only of the same request."""
    if existing.request_hash != draft.request_hash:
        raise IdempotencyConflict(
            "idempotencyKey was already used with a different request", field="idempotencyKey"
        )

