"""createPayment: validate, record the PENDING payment idempotently, enqueue, answer.

The payment row is inserted on the primary before the request is produced, so the unique
index on (partner, idempotency key) decides between concurrent duplicates: exactly one
creates the payment, the others find it. The mutation answers only after the broker has
acknowledged the request (acks=all). If the broker does not take it, the PENDING row is
withdrawn and the caller gets UNAVAILABLE: nothing is recorded, and a retry with the same
key starts afresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ..cache.entities import status_event
from ..config import Settings
from ..db import Database
from ..db.payments import PaymentRow, delete_pending, insert_pending
from ..domain.currency import currency_exponent
from ..domain.errors import BadUserInput, IdempotencyConflict, Unavailable
from ..domain.money import Money
from ..domain.validation import parse_account_id, validate_idempotency_key, validate_reference
from ..events.messages import PaymentRequested
from .auth import WRITE, Caller
from .reads import Reader

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


def request_hash(partner_id: uuid.UUID, source: uuid.UUID, destination: uuid.UUID,
                 money: Money, reference: str | None) -> str:
    """What makes two requests "the same" for idempotency: every field but the key."""
    canonical = json.dumps(
        [str(partner_id), str(source), str(destination), money.minor, money.currency, reference],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class PaymentService:
    def __init__(self, settings: Settings, db: Database, reader: Reader, producer: LazyProducer) -> None:
        self._settings = settings
        self._db = db
        self._reader = reader
        self._producer = producer

    async def create(self, caller: Caller, request: CreatePayment) -> PaymentRow:
        caller.require(WRITE)
        key = validate_idempotency_key(request.idempotency_key)
        reference = validate_reference(request.reference)
        source_id = parse_account_id(request.source_account_id, field="sourceAccountId")
        destination_id = parse_account_id(request.destination_account_id, field="destinationAccountId")
        currency_exponent(request.currency)
        money = Money.parse(request.amount, request.currency, field="amount")
        if source_id == destination_id:
            raise BadUserInput("destinationAccountId must differ from sourceAccountId",
                               field="destinationAccountId")
        accounts = await self._reader.accounts([source_id, destination_id])
        source, destination = accounts.get(source_id), accounts.get(destination_id)
        # A foreign source account is reported exactly like a missing one.
        if source is None or not caller.owns(source.partner_id):
            raise BadUserInput("sourceAccountId: no such account", field="sourceAccountId")
        if destination is None:
            raise BadUserInput("destinationAccountId: no such account", field="destinationAccountId")
        if source.currency != money.currency or destination.currency != money.currency:
            raise BadUserInput(
                f"currency: payment is {money.currency}, source account is {source.currency},"
                f" destination account is {destination.currency}",
                field="currency", extensions={"reason": "CURRENCY_MISMATCH"},
            )

        now = datetime.now(UTC)
        draft = PaymentRow(
            id=uuid.uuid4(), partner_id=caller.partner_id, idempotency_key=key,
            request_hash=request_hash(caller.partner_id, source_id, destination_id, money, reference),
            source_account_id=source_id, destination_account_id=destination_id,
            amount_minor=money.minor, currency=money.currency, reference=reference,
            status="PENDING", failure_reason=None, version=1, created_at=now, updated_at=now,
        )
        async with self._db.write_session() as session:
            row, created = await insert_pending(session, draft)
        if not created:
            if row.request_hash != draft.request_hash:
                raise IdempotencyConflict(
                    "idempotencyKey was already used with a different request", field="idempotencyKey"
                )
            if row.status != "PENDING":
                return row
        # Produce even for a PENDING duplicate: its first request may still be in flight and
        # fail; a second copy of the message is harmless to the worker.
        try:
            await self._producer.send(
                self._settings.kafka.requested_topic,
                _message(row).encode(),
                key=str(row.source_account_id).encode(),
            )
        except Unavailable:
            if created:
                async with self._db.write_session() as session:
                    await delete_pending(session, row.id)
            raise
        # Visible to payment(id) at once, whatever the replica's lag.
        await self._reader.remember_payment(row)
        if created:
            # Account activity subscribers learn of the new payment; not awaited, since
            # nobody loses anything if it is lost (a watcher starts from the current state).
            event = status_event(row, source, destination, with_accounts=False)
            await self._producer.send_nowait(
                self._settings.kafka.status_topic, event.encode(), key=str(row.id).encode()
            )
        return row


def _message(row: PaymentRow) -> PaymentRequested:
    return PaymentRequested(
        payment_id=row.id, partner_id=row.partner_id, idempotency_key=row.idempotency_key,
        request_hash=row.request_hash, source_account_id=row.source_account_id,
        destination_account_id=row.destination_account_id, amount_minor=row.amount_minor,
        currency=row.currency, reference=row.reference, created_at=row.created_at.isoformat(),
    )


def _log_failure(future: asyncio.Future[object]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("unacknowledged produce failed: %s", type(future.exception()).__name__)


class LazyProducer:
    """The API's producer, started on first use so the API starts (and serves reads) while
    the broker is down; every failure to get an acknowledgement becomes UNAVAILABLE."""

    def __init__(self, settings: Settings) -> None:
        from ..events.kafka import make_producer

        self._settings = settings
        self._make: Callable[[], AIOKafkaProducer] = lambda: make_producer(settings.kafka)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = self._make()
                try:
                    await asyncio.wait_for(producer.start(), self._settings.kafka.produce_timeout_s)
                except (KafkaError, OSError, TimeoutError) as exc:
                    await producer.stop()
                    raise Unavailable("the payment queue is unavailable; retry with the same "
                                      "idempotencyKey") from exc
                self._producer = producer
            return self._producer

    async def send(self, topic: str, value: bytes, *, key: bytes) -> None:
        """Produce and wait for the broker's acknowledgement (acks=all)."""
        producer = await self._get()
        # aiokafka expires an unsent batch after request_timeout_ms and fails its future, so
        # a message we report as not accepted is not sent later either; the outer bound is
        # only a guard.
        timeout = self._settings.kafka.request_timeout_ms / 1000 + 2.0
        try:
            future = await asyncio.wait_for(producer.send(topic, value, key=key), timeout)
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("produce to %s failed: %s", topic, type(exc).__name__)
            raise Unavailable(
                "the payment queue is unavailable; retry with the same idempotencyKey"
            ) from exc

    async def send_nowait(self, topic: str, value: bytes, *, key: bytes) -> None:
        """Produce without waiting for the acknowledgement; a failure is only logged."""
        try:
            producer = await self._get()
            future = await producer.send(topic, value, key=key)
        except (KafkaError, OSError, TimeoutError, Unavailable) as exc:
            log.warning("produce to %s failed: %s", topic, type(exc).__name__)
            return
        future.add_done_callback(_log_failure)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
