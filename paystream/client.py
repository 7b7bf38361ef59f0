"""A small typed client for paystream: queries and mutations over HTTP, subscriptions over
either websocket protocol. Used by the tests and the benchmarks, and an example for partners.

    async with PaystreamClient("http://localhost:8000", key) as api:
        payment = await api.create_payment(idempotency_key="order-1", source_account_id=a,
                                           destination_account_id=b, amount="12.50",
                                           currency="USD")
        async with api.subscriptions() as ws:
            async for update in ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}):
                print(update["paymentStatus"]["status"])
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Self

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .domain.webhooks import parse_signature_header, signature

Protocol = Literal["graphql-transport-ws", "graphql-ws"]

PAYMENT_FIELDS = """
  id status amount currency reference failureReason createdAt updatedAt
  capturedAmount authorizationExpiresAt
  sourceAccount { id name currency balance availableBalance }
  destinationAccount { id name currency balance availableBalance }
"""
PAYMENT_STATUS = f"subscription($id: ID!) {{ paymentStatus(id: $id) {{ {PAYMENT_FIELDS} }} }}"
ACCOUNT_ACTIVITY = (
    f"subscription($id: ID!) {{ accountActivity(accountId: $id) {{ {PAYMENT_FIELDS} }} }}"
)
CREATE_PAYMENT = f"""
mutation($input: CreatePaymentInput!) {{ createPayment(input: $input) {{ {PAYMENT_FIELDS} }} }}
"""
CREATE_PAYMENTS = f"""
mutation($inputs: [CreatePaymentInput!]!) {{ createPayments(inputs: $inputs) {{
  payment {{ {PAYMENT_FIELDS} }} error {{ code message field reason }} }} }}
"""
CAPTURE_PAYMENT = f"""
mutation($input: CapturePaymentInput!) {{ capturePayment(input: $input) {{ {PAYMENT_FIELDS} }} }}
"""
CANCEL_PAYMENT = f"""
mutation($input: CancelPaymentInput!) {{ cancelPayment(input: $input) {{ {PAYMENT_FIELDS} }} }}
"""
REFUND_FIELDS = "id status amount reason failureReason createdAt updatedAt payment { id }"
REFUND_PAYMENT = f"""
mutation($input: RefundPaymentInput!) {{ refundPayment(input: $input) {{ {REFUND_FIELDS} }} }}
"""
ACCOUNT_FIELDS = "id name currency balance availableBalance"
CREATE_ACCOUNT = f"""
mutation($input: CreateAccountInput!) {{ createAccount(input: $input) {{ {ACCOUNT_FIELDS} }} }}
"""


def _entries(metadata: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in metadata.items()]


def payment_input(*, idempotency_key: str, source_account_id: str, destination_account_id: str,
                  amount: str, currency: str, reference: str | None = None,
                  capture: bool = True, authorization_ttl_seconds: int | None = None,
                  metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A CreatePaymentInput as GraphQL spells it (for createPayment and createPayments)."""
    payload: dict[str, Any] = {
        "idempotencyKey": idempotency_key, "sourceAccountId": source_account_id,
        "destinationAccountId": destination_account_id, "amount": amount,
        "currency": currency, "reference": reference,
    }
    if metadata is not None:
        payload["metadata"] = _entries(metadata)
    if not capture:
        payload["capture"] = False
        payload["authorizationTtlSeconds"] = authorization_ttl_seconds
    return payload


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """One input's answer from createPayments: exactly one of the two is set. ``error`` has
    ``code``, ``message``, ``field`` and ``reason`` (as createPayment's error extensions)."""

    payment: dict[str, Any] | None
    error: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.payment is not None


class GraphQLErrors(Exception):
    """The server answered with GraphQL errors; ``errors`` holds them as sent."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{e.get('extensions', {}).get('code')}: {e.get('message')}"
                                   for e in errors))
        self.errors = errors

    @property
    def codes(self) -> list[str | None]:
        return [e.get("extensions", {}).get("code") for e in self.errors]


class PaystreamClient:
    """Queries and mutations over HTTP.

    A request refused with a retry hint (``extensions.retryAfter``: RATE_LIMITED, or
    UNAVAILABLE from a process too busy to admit it) was not executed, so it is sent again
    after the hint, for at most ``max_rate_limit_wait`` seconds in all; past that the error is
    raised. Retrying a mutation is safe for that reason, and createPayment carries an
    idempotency key besides."""

    def __init__(self, base_url: str, key: str, *, timeout: float = 10.0,
                 max_rate_limit_wait: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.max_rate_limit_wait = max_rate_limit_wait
        self.rate_limited = 0  # answers with a retry hint (not executed) whose request was sent again
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {key}"},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """``data`` of the response; GraphQL errors raise :class:`GraphQLErrors`."""
        waited = 0.0
        while True:
            response = await self._http.post("/graphql", json={"query": query,
                                                                "variables": variables or {}})
            body = response.json()
            wait = _retry_wait(body)
            if wait is None or waited + wait > self.max_rate_limit_wait:
                break
            self.rate_limited += 1
            waited += wait
            await asyncio.sleep(wait)
        if body.get("errors"):
            raise GraphQLErrors(body["errors"])
        response.raise_for_status()
        return dict(body["data"])

    async def create_payment(self, *, idempotency_key: str, source_account_id: str,
                             destination_account_id: str, amount: str, currency: str,
                             reference: str | None = None, capture: bool = True,
                             authorization_ttl_seconds: int | None = None,
                             metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A payment (PENDING); ``capture=False`` authorizes it (a hold) instead. ``metadata``
        (your own key-value pairs, in order) is part of the request for idempotency."""
        data = await self.execute(CREATE_PAYMENT, {"input": payment_input(
            idempotency_key=idempotency_key, source_account_id=source_account_id,
            destination_account_id=destination_account_id, amount=amount, currency=currency,
            reference=reference, capture=capture,
            authorization_ttl_seconds=authorization_ttl_seconds, metadata=metadata)})
        return dict(data["createPayment"])

    async def create_payments(self, inputs: Sequence[Mapping[str, Any]]
                              ) -> list[PaymentResult]:
        """Many payments in one request (createPayments): ``inputs`` are CreatePaymentInput
        objects as GraphQL spells them (:func:`payment_input` builds one). The answer has one
        :class:`PaymentResult` per input, in order: its payment (PENDING, or as it stands for
        an idempotent replay) or its error. A refusal of the whole call (UNAVAILABLE: none was
        recorded; QUERY_TOO_COMPLEX; RATE_LIMITED past the waiting budget) raises
        :class:`GraphQLErrors`; sending the same inputs again is safe."""
        data = await self.execute(CREATE_PAYMENTS, {"inputs": [dict(i) for i in inputs]})
        return [PaymentResult(payment=r["payment"], error=r["error"])
                for r in data["createPayments"]]

    async def capture_payment(self, payment_id: str, amount: str | None = None
                              ) -> dict[str, Any]:
        """Capture an authorized payment (all of it when ``amount`` is None)."""
        data = await self.execute(CAPTURE_PAYMENT, {"input": {"paymentId": payment_id,
                                                              "amount": amount}})
        return dict(data["capturePayment"])

    async def cancel_payment(self, payment_id: str) -> dict[str, Any]:
        """Release an authorized payment's hold."""
        data = await self.execute(CANCEL_PAYMENT, {"input": {"paymentId": payment_id}})
        return dict(data["cancelPayment"])

    async def refund_payment(self, *, idempotency_key: str, payment_id: str,
                             amount: str | None = None, reason: str | None = None,
                             metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Refund a SUCCEEDED payment (what is left when ``amount`` is None); PENDING."""
        data = await self.execute(REFUND_PAYMENT, {"input": {
            "idempotencyKey": idempotency_key, "paymentId": payment_id, "amount": amount,
            "reason": reason, "metadata": None if metadata is None else _entries(metadata)}})
        return dict(data["refundPayment"])

    async def create_account(self, *, idempotency_key: str, name: str,
                             currency: str, metadata: Mapping[str, str] | None = None
                             ) -> dict[str, Any]:
        """A zero-balance account owned by the caller."""
        data = await self.execute(CREATE_ACCOUNT, {"input": {
            "idempotencyKey": idempotency_key, "name": name, "currency": currency,
            "metadata": None if metadata is None else _entries(metadata)}})
        return dict(data["createAccount"])

    @asynccontextmanager
    async def subscriptions(self, protocol: Protocol = "graphql-transport-ws"
                            ) -> AsyncIterator[Subscriptions]:
        url = "ws" + self.base_url.removeprefix("http") + "/graphql"
        async with Subscriptions(url, self.key, protocol) as ws:
            yield ws


def _retry_wait(body: dict[str, Any]) -> float | None:
    """Seconds to wait before sending a request the server did not execute again (its answer
    carries ``retryAfter``); None for other answers."""
    for error in body.get("errors") or []:
        extensions = error.get("extensions") or {}
        if extensions.get("code") in ("RATE_LIMITED", "UNAVAILABLE") and "retryAfter" in extensions:
            return max(float(extensions["retryAfter"]), 0.001)
    return None


class Subscriptions:
    """One websocket connection carrying any number of subscriptions."""

    def __init__(self, url: str, key: str, protocol: Protocol = "graphql-transport-ws",
                 **connect_options: Any) -> None:
        self.url, self.key, self.protocol = url, key, protocol
        self._connect_options = connect_options
        self._ids = itertools.count(1)
        self._queues: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.ws: ClientConnection | None = None
        self.close_code: int | None = None

    async def __aenter__(self) -> Self:
        self.ws = await connect(self.url, subprotocols=[self.protocol],  # type: ignore[list-item]  # websockets wants its Subprotocol NewType
                                **self._connect_options)
        await self.send({"type": "connection_init",
                         "payload": {"authorization": f"Bearer {self.key}"}})
        while True:
            message = json.loads(await self.ws.recv())
            if message["type"] == "connection_ack":
                break
            if message["type"] == "connection_error":
                raise GraphQLErrors([{"message": str(message.get("payload")),
                                      "extensions": {"code": "UNAUTHENTICATED"}}])
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(message))

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "ping":
                    await self.send({"type": "pong"})
                queue = self._queues.get(message.get("id", ""))
                if queue is not None:
                    await queue.put(message)
        finally:
            self.close_code = self.ws.close_code
            for queue in self._queues.values():
                queue.put_nowait(None)  # the connection ended

    async def start(self, query: str, variables: dict[str, Any] | None = None) -> str:
        """Send a subscribe (or legacy start) message; returns the operation id."""
        op_id = str(next(self._ids))
        self._queues[op_id] = asyncio.Queue()
        payload = {"query": query, "variables": variables or {}}
        kind = "subscribe" if self.protocol == "graphql-transport-ws" else "start"
        await self.send({"id": op_id, "type": kind, "payload": payload})
        return op_id

    @property
    def operations(self) -> list[str]:
        """The ids of the subscriptions this connection still follows."""
        return list(self._queues)

    async def stop(self, op_id: str) -> None:
        """End a subscription: tell the server (complete, or legacy stop) and forget it."""
        self._queues.pop(op_id, None)
        if self.ws is None or self.close_code is not None:
            return
        kind = "complete" if self.protocol == "graphql-transport-ws" else "stop"
        with contextlib.suppress(ConnectionClosed):
            await self.send({"id": op_id, "type": kind})

    async def results(self, op_id: str) -> AsyncIterator[dict[str, Any]]:
        """Each result's ``data``; ends on complete; errors raise :class:`GraphQLErrors`;
        a dropped connection raises ``ConnectionError``. A caller that leaves early (a
        ``break``, an exception; close the iterator, e.g. with ``contextlib.aclosing``, to
        have it happen at once) ends the subscription on the server too."""
        queue = self._queues[op_id]
        ended = False  # by the server or the connection: nothing to tell the server
        try:
            while True:
                message = await queue.get()
                if message is None:
                    ended = True
                    raise ConnectionError(f"connection closed ({self.close_code})")
                kind = message["type"]
                if kind in ("next", "data"):
                    payload = message["payload"]
                    if payload.get("errors"):
                        raise GraphQLErrors(payload["errors"])
                    yield payload["data"]
                elif kind == "error":
                    ended = True
                    errors = message["payload"]
                    raise GraphQLErrors(errors if isinstance(errors, list) else [errors])
                elif kind == "complete":
                    ended = True
                    return
        finally:
            if ended:
                self._queues.pop(op_id, None)
            else:
                await self.stop(op_id)

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None
                        ) -> AsyncIterator[dict[str, Any]]:
        async for data in self.results(await self.start(query, variables)):
            yield data


class WebhookSignatureError(ValueError):
    """A webhook whose ``Paystream-Signature`` does not prove it came from paystream, intact
    and recent: answer it 400 and do not act on it."""


def verify_signature(secrets: str | Sequence[str], header: str | None, body: bytes, *,
                     tolerance: float = 300.0, now: float | None = None) -> None:
    """Check a webhook's ``Paystream-Signature`` header against the raw request ``body``.

    ``secrets`` is the endpoint's signing secret, or several (during a rotation, the new and
    the old: either one's ``v1`` is accepted). The timestamp must be within ``tolerance``
    seconds (5 minutes) of ``now`` (the local clock), so a captured request cannot be
    replayed later. Comparisons are constant-time. Raises :class:`WebhookSignatureError`;
    returns None when the signature is good. Verify the bytes as received, before parsing
    them: re-serialized JSON would not match."""
    if not header:
        raise WebhookSignatureError("no Paystream-Signature header")
    timestamp, values = parse_signature_header(header)
    if timestamp is None or not values:
        raise WebhookSignatureError("malformed Paystream-Signature header")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError("signature timestamp outside the tolerance")
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    # Every pair is compared, whatever matched first: the time taken says nothing.
    matched = False
    for key in keys:
        expected = signature(key, timestamp, body)
        for value in values:
            matched |= hmac.compare_digest(expected.encode(), value.encode())
    if not matched:
        raise WebhookSignatureError("no v1 signature matches")
