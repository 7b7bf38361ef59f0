"""Admission control: a bounded number of GraphQL HTTP requests execute at once per process.

Past ``max_in_flight`` a request waits for a slot, which costs a coroutine and nothing else;
one that has waited ``queue_timeout_s`` is answered 503 UNAVAILABLE with a retry hint, without
having run. A burst larger than the process can serve is then served at its capacity, rather
than every request taking a connection, starting a produce, and timing out together (the
heavy drain scenario: 5,000 simultaneous createPayment calls on one process collapsed so).
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from ..metrics import RATE_LIMITED

_BUSY = json.dumps({"data": None, "errors": [{
    "message": "the service is busy; retry shortly",
    "extensions": {"code": "UNAVAILABLE", "retryAfter": 1.0},
}]}).encode()


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, *, max_in_flight: int, queue_timeout_s: float) -> None:
        self.app = app
        self.queue_timeout_s = queue_timeout_s
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._slots is None or scope["type"] != "http" or scope["path"] != "/graphql":
            await self.app(scope, receive, send)
            return
        try:
            if self._slots.locked():  # no free slot: wait, with a deadline
                async with asyncio.timeout(self.queue_timeout_s):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()  # returns at once: no timer for the usual case
        except TimeoutError:
            RATE_LIMITED.labels("admission").inc()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_BUSY)).encode()), (b"retry-after", b"1"),
            ]})
            await send({"type": "http.response.body", "body": _BUSY})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()
