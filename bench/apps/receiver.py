"""A webhook receiver for the webhook bench (scenario 9): uvicorn on loopback, the same server
stack as the other apps. Every POST is answered 200 at once; its receipt time (after the
whole body arrived) and its body are kept in memory, and nothing else is done per request,
so the sender and the load generator that hit it directly pay the same cost here.

``GET /stats?prefix=P`` answers, for the paths starting with P: how many requests, the first
and last receipt times (unix seconds), and per request the receipt time and the body's
``createdAt`` (the event's time), parsed only then. ``POST /reset`` forgets everything.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

_received: list[tuple[float, str, bytes]] = []
_sample: dict[str, Any] = {}


async def hook(request: Request) -> Response:
    body = await request.body()
    _received.append((time.time(), request.url.path, body))
    if not _sample and request.headers.get("paystream-event-id"):
        # One real webhook, so the load generators send the same bytes and headers.
        _sample.update(body=body.decode(), headers={
            name: value for name, value in request.headers.items()
            if name.startswith("paystream-") or name in ("content-type", "user-agent")})
    return PlainTextResponse("ok")


def _event_time(body: bytes) -> float | None:
    try:
        return datetime.fromisoformat(json.loads(body)["createdAt"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


async def stats(request: Request) -> Response:
    prefix = request.query_params.get("prefix", "/")
    picked = [(at, body) for at, path, body in _received if path.startswith(prefix)]
    answer: dict[str, Any] = {"count": len(picked),
                              "first": picked[0][0] if picked else None,
                              "last": picked[-1][0] if picked else None}
    if request.query_params.get("detail"):
        answer["received"] = [[at, _event_time(body)] for at, body in picked]
        answer["ids"] = [json.loads(body).get("id") for _, body in picked]
        answer["sample"] = _sample or None
    return JSONResponse(answer)


async def reset(request: Request) -> Response:
    _received.clear()
    return PlainTextResponse("reset")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(routes=[
    Route("/healthz", healthz), Route("/stats", stats), Route("/reset", reset, methods=["POST"]),
    Route("/{path:path}", hook, methods=["POST"]),
])
