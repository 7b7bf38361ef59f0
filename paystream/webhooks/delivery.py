"""The delivering half of a sender: claim due rows, POST each signed, settle it.

Rows are leased (``db.webhook_schedule.claim_due``) so any number of senders share the
schedule and no transaction is open during a request; results are recorded in batches
(:class:`Settler`). Each attempt is its own task in the loop's task group, at most
``max_in_flight`` per process and ``max_in_flight_per_endpoint`` per endpoint (the claim
keeps both), so a slow or failing endpoint holds only its own rows: the others' are claimed
past it. A failed attempt is due again after :func:`paystream.domain.webhooks.retry_delay_s`;
after the retry window the row is FAILED (the payment's next version may then go), and an
endpoint whose attempts all failed for ``disable_after_s`` is DISABLED (its rows held until
enabled).
Each attempt is counted in ``paystream_webhook_attempts_total`` by outcome and answer, timed,
and a delivery's lag from the event's time observed (``paystream.metrics``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..config import WebhookSettings
from ..db import Database
from ..db.webhook_schedule import AttemptResult, ClaimedDelivery, claim_due, record_attempts
from ..domain.webhooks import retry_delay_s, signature_header
from ..metrics import (
    WEBHOOK_ATTEMPT_SECONDS,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_DELIVERY_LAG_SECONDS,
    WEBHOOK_IN_FLIGHT,
)
from ..retry import until_done
from ..tracing import span
from .secrets import SecretBox, SecretsUnavailable
from .transport import WebhookClients
from .urls import Resolver, UrlRefused, check_url

log = logging.getLogger("paystream.webhooks")

USER_AGENT = "paystream-webhooks/1"

# record_attempts' answer -> the outcome label of paystream_webhook_attempts_total.
_OUTCOMES = {"DELIVERED": "delivered", "PENDING": "retry", "FAILED": "given_up",
             "HELD": "held", "DELETED": "deleted", "SETTLED": "retry"}


def response_class(status: int | None, error: str | None) -> str:
    """The answer's label: ``2xx`` .. ``5xx``, or why there was none (:meth:`DeliveryLoop.post`
    words its errors so)."""
    if status is not None:
        return f"{min(max(status // 100, 1), 5)}xx"
    for prefix, label in (("timeout", "timeout"), ("connection failed", "connection"),
                          ("refused", "refused")):
        if error is not None and error.startswith(prefix):
            return label
    return "error"


def event_lag_s(body: str, now: float) -> float | None:
    """Seconds from the event's ``createdAt`` (in the body) to ``now`` (unix time)."""
    try:
        created = datetime.fromisoformat(json.loads(body)["createdAt"])
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, now - created.timestamp())


class Settler:
    """Records finished attempts in batches: everything that finished while the previous
    batch was being written goes in one transaction (a handful of set-based statements and
    one commit for all of them, instead of four statements and a commit each)."""

    def __init__(self, settings: WebhookSettings, db: Database, *, max_batch: int = 200) -> None:
        self._settings = settings
        self._db = db
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[AttemptResult, asyncio.Future[str]]] = asyncio.Queue()

    async def settle(self, result: AttemptResult) -> str:
        """The row's state once the attempt is recorded
        (``db.webhook_schedule.record_attempts``)."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((result, done))
        return await done

    async def _record(self, results: list[AttemptResult]) -> list[str]:
        async with self._db.write_session() as session:
            return await record_attempts(session, results,
                                         window_s=self._settings.retry_window_s,
                                         disable_after_s=self._settings.disable_after_s)

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            results = [result for result, _ in batch]
            states = await until_done("recording webhook attempts",
                                      lambda: self._record(results))  # noqa: B023 (awaited at once)
            for (_, done), state in zip(batch, states, strict=True):
                if not done.done():  # its attempt may have been cancelled meanwhile
                    done.set_result(state)


class DeliveryLoop:
    def __init__(self, settings: WebhookSettings, db: Database, box: SecretBox,
                 clients: WebhookClients, resolver: Resolver, *, dev: bool) -> None:
        self._settings = settings
        self._db = db
        self._box = box
        self._clients = clients
        self._resolver = resolver
        self._dev = dev
        self._in_flight: Counter[uuid.UUID] = Counter()
        self._wake = asyncio.Event()
        self._settler = Settler(settings, db)
        self.attempts = 0

    def wake(self) -> None:
        """Look for due rows now (new rows were scheduled, or an attempt ended)."""
        self._wake.set()

    async def run(self) -> None:
        settings = self._settings
        async with asyncio.TaskGroup() as group:
            group.create_task(self._settler.run(), name="webhook-settler")
            while True:
                self._wake.clear()
                free = settings.max_in_flight - sum(self._in_flight.values())
                claimed: list[ClaimedDelivery] = []
                if free > 0:
                    limit = min(free, settings.claim_batch)
                    in_flight = dict(self._in_flight)
                    claimed = await until_done("claiming webhook deliveries",
                                               lambda: self._claim(limit, in_flight))  # noqa: B023 (awaited at once)
                for delivery in claimed:
                    self._in_flight[delivery.endpoint_id] += 1
                    WEBHOOK_IN_FLIGHT.inc()
                    group.create_task(self._attempt(delivery),
                                      name=f"webhook-{delivery.event_id}")
                if not claimed:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a
                    # cancellation that lands as the wake-up completes (CPython gh-86296), and
                    # the loop then ran on for ever: the sender never stopped (a suite run hung
                    # in a webhook test's shutdown).
                    try:
                        async with asyncio.timeout(settings.poll_interval_s):
                            await self._wake.wait()
                    except TimeoutError:
                        pass

    async def _claim(self, limit: int, in_flight: dict[uuid.UUID, int]) -> list[ClaimedDelivery]:
        async with self._db.write_session() as session:
            return await claim_due(session, limit=limit, lease_s=self._settings.lease_s,
                                   per_endpoint=self._settings.max_in_flight_per_endpoint,
                                   in_flight=in_flight)

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        # Traced, each attempt continues the trace of the status event it delivers (the URL
        # is not recorded: partners put tokens in them).
        with span("webhook attempt", parent=delivery.trace, kind=SpanKind.CLIENT, attributes={
                "paystream.payment_id": str(delivery.payment_id),
                "paystream.webhook.event_id": str(delivery.event_id),
                "paystream.webhook.endpoint_id": str(delivery.endpoint_id),
                "paystream.webhook.type": delivery.type,
                "paystream.webhook.attempt": delivery.attempt}) as current:
            status = await self._post_and_settle(delivery)
            if current is not None:
                if status is not None:
                    current.set_attribute("http.response.status_code", status)
                if status is None or not 200 <= status < 300:
                    current.set_status(Status(StatusCode.ERROR, "not delivered"))

    async def _post_and_settle(self, delivery: ClaimedDelivery) -> int | None:
        try:
            started = time.monotonic()
            status, error = await self.post(delivery)
            WEBHOOK_ATTEMPT_SECONDS.observe(time.monotonic() - started)
            delivered = status is not None and 200 <= status < 300
            answered_at = time.time()
            settings = self._settings
            delay = retry_delay_s(delivery.attempt, base_s=settings.retry_base_s,
                                  max_s=settings.retry_max_s, jitter=random.random())
            state = await self._settler.settle(AttemptResult(
                delivery, response_status=status, error=error, delivered=delivered,
                retry_in_s=delay))
            self.attempts += 1
            WEBHOOK_ATTEMPTS.labels(_OUTCOMES.get(state, "retry"),
                                    response_class(status, error)).inc()
            if state == "DELIVERED":
                lag = event_lag_s(delivery.body, answered_at)
                if lag is not None:
                    WEBHOOK_DELIVERY_LAG_SECONDS.observe(lag)
            if state == "DELETED":
                log.info("webhook %s: endpoint %s deleted during the attempt", delivery.event_id,
                         delivery.endpoint_id)
            elif delivered:
                log.info("webhook %s (%s) delivered to endpoint %s, attempt %d",
                         delivery.event_id, delivery.type, delivery.endpoint_id, delivery.attempt)
            else:
                outcome = {"FAILED": "given up",
                           "HELD": "endpoint disabled: held until it is enabled"}.get(
                               state, f"retry in {delay:.1f} s")
                log.warning("webhook %s to endpoint %s failed (attempt %d: %s); %s", delivery.event_id,
                            delivery.endpoint_id, delivery.attempt, error, outcome)
            return status
        finally:
            WEBHOOK_IN_FLIGHT.dec()
            self._in_flight[delivery.endpoint_id] -= 1
            if self._in_flight[delivery.endpoint_id] <= 0:
                del self._in_flight[delivery.endpoint_id]
            self.wake()

    def _secrets(self, delivery: ClaimedDelivery) -> list[str]:
        secrets = [self._box.decrypt(delivery.secret_ciphertext)]
        expires = delivery.previous_secret_expires_at
        if (delivery.previous_secret_ciphertext is not None and expires is not None
                and expires > datetime.now(UTC)):
            secrets.append(self._box.decrypt(delivery.previous_secret_ciphertext))
        return secrets

    async def post(self, delivery: ClaimedDelivery) -> tuple[int | None, str | None]:
        """One signed POST: the response status (None when there was none) and what went
        wrong (None for a 2xx). Never raises for the endpoint's or the network's faults."""
        body = delivery.body.encode()
        try:
            await check_url(delivery.url, dev=self._dev, resolver=self._resolver,
                            timeout_s=self._settings.resolve_timeout_s)
        except UrlRefused as exc:
            return None, f"refused: {exc.message}"
        try:
            secrets = self._secrets(delivery)
        except SecretsUnavailable as exc:
            log.error("webhook %s not signed: %s", delivery.event_id, exc)
            return None, "the sender cannot sign for this endpoint (server configuration)"
        headers = {
            "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "Paystream-Event-Id": str(delivery.event_id),
            "Paystream-Signature": signature_header(secrets, int(time.time()),
                                                    body),
        }
        try:
            # httpx's timeout bounds each phase (connect, each read); the deadline bounds the
            # whole exchange, so an endpoint dripping a byte at a time cannot hold a slot.
            async with asyncio.timeout(self._settings.request_timeout_s), \
                    self._clients.client(delivery.endpoint_id) as client, client.stream(
                        "POST", delivery.url, content=body, headers=headers) as response:
                # At most max_response_bytes of the answer are read; the rest is dropped
                # with the connection.
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= self._settings.max_response_bytes:
                        break
                status = response.status_code
        except (httpx.TimeoutException, TimeoutError):
            return None, f"timeout after {self._settings.request_timeout_s:g} s"
        except httpx.ConnectError as exc:
            return None, f"connection failed: {str(exc)[:200] or type(exc).__name__}"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {str(exc)[:200]}"
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"


__all__ = ["DeliveryLoop", "Settler", "event_lag_s", "response_class"]
