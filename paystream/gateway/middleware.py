"""ASGI middleware in front of every route: a request id on each request, response and log
line; headers that tell browsers and caches how to treat each response; a cap on the size of
request bodies and on the time a client may take to send one."""

from __future__ import annotations

import asyncio
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logging import request_id_var

REQUEST_ID_HEADER = "x-request-id"
# An incoming id is kept only when it is short and plain, so it cannot forge log lines.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(scope: Scope) -> str:
    """The id the middleware gave this request (a fresh one outside it)."""
    value = (scope.get("state") or {}).get("request_id")
    return value if isinstance(value, str) else new_request_id()


class RequestIdMiddleware:
    """Accepts a sane ``X-Request-ID`` or makes one; puts it in the scope's state, in the
    logging context and on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER.encode():
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SANE_ID.fullmatch(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k != REQUEST_ID_HEADER.encode()]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")


class ResponseHeadersMiddleware:
    """``X-Content-Type-Options: nosniff`` on every HTTP response (a browser must not run a
    JSON answer or the metrics text as something else), and ``Cache-Control: no-store`` on
    every ``/graphql`` response: GET queries return balances, which no browser or proxy cache
    may keep. Outside the gateway's other layers, so their refusals (413, 408, 503) get both."""

    def __init__(self, app: ASGIApp, graphql_path: str = "/graphql") -> None:
        self.app = app
        self.graphql_path = graphql_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        graphql = scope["path"] == self.graphql_path
        replaced = {_NOSNIFF[0], _NO_STORE[0]} if graphql else {_NOSNIFF[0]}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in replaced]
                headers.append(_NOSNIFF)
                if graphql:
                    headers.append(_NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send, status: int, message: str) -> None:
    body = ('{"errors":[{"message":"' + message
            + '","extensions":{"code":"BAD_USER_INPUT"}}]}').encode()
    await send({
        "type": "http.response.start", "status": status,
        # Closed after the answer: the rest of the body is not worth reading (or waiting for).
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answers 413 to a body over ``max_bytes``: at once when Content-Length says so, else
    (chunked uploads) as soon as the bytes read pass the limit; and 408 to a body not read
    whole within ``read_timeout_s`` (one deadline for the whole body, so trickling a byte at a
    time does not extend it), closing the connection either way. The body is read here,
    before the app sees it and before admission control gives the request an execution slot,
    so slow senders hold only their own connection; bodies are small (a GraphQL document), so
    buffering is cheap."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _refuse(send, 413, "request body too large")
                    return
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.read_timeout_s):
                complete = await self._read(receive, chunks)
        except TimeoutError:
            await _refuse(send, 408, "request body not received in time")
            return
        if complete is None:
            return  # the client went away
        if not complete:
            await _refuse(send, 413, "request body too large")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, chunks: list[bytes]) -> bool | None:
        """Reads the body into ``chunks``: True when whole, False past ``max_bytes``, None
        when the client disconnected."""
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return True
