"""Admission control on an inline app: past its slots a request waits, then is refused 503
UNAVAILABLE with a retry hint, without having run; other paths are never held back."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from paystream.gateway.admission import AdmissionMiddleware


async def test_a_request_past_the_slots_waits_then_is_refused_without_running() -> None:
    release = asyncio.Event()
    ran: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ran.append(scope["query_string"].decode())
        if scope["query_string"] == b"slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guarded = AdmissionMiddleware(app, max_in_flight=1, queue_timeout_s=0.2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded),
                                 base_url="http://test") as http:
        slow = asyncio.create_task(http.post("/graphql?slow"))
        while ran != ["slow"]:
            await asyncio.sleep(0)  # until the slow request holds the only slot
        refused = await http.post("/graphql?refused")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["errors"][0]["extensions"] == {"code": "UNAVAILABLE",
                                                             "retryAfter": 1.0}
        assert (await http.get("/healthz?health")).text == "ok"  # not a GraphQL request
        waiting = asyncio.create_task(http.post("/graphql?waited"))
        await asyncio.sleep(0.05)
        assert "waited" not in ran  # held back while the slot is taken
        release.set()  # the slot frees within its wait: it runs
        assert (await slow).text == "ok" and (await waiting).text == "ok"
    assert ran == ["slow", "health", "waited"]
