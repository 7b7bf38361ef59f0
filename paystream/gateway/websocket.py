"""Websocket plumbing: a subscriber that stops reading is cut off before it costs memory, and
a subscribe past the per-connection limit or the key's subscribe rate is refused with a stable
error code.

uvicorn does not make a websocket ``send`` wait while the client is not reading: what the
socket does not take piles up in the transport's write buffer, without bound. Before each
message, the adapter looks at that buffer; past ``max_buffered_bytes`` the connection is
dropped (its transport aborted, so the memory is freed at once and the client sees the
connection end and can reconnect).

Both protocols' handlers give each subscription operation a :class:`~.frames.DirectOperation`
in the operation's task, through which live updates are written below Strawberry's handler
(``gateway/frames.py``, ``schema/sharing.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from graphql import GraphQLError, GraphQLFormattedError
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import NonJsonMessageReceived
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ErrorMessage as TransportErrorMessage,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import SubscribeMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ErrorMessage, StartMessage

from ..domain.errors import QueryTooComplex, RateLimited
from ..metrics import RATE_LIMITED, SUBSCRIPTION_PAYLOADS
from ..schema.sharing import OPERATION_FRAMES
from .frames import (
    PROTOCOL,
    DirectOperation,
    SocketFrames,
    frame_prefix,
    protocol_of,
    socket_frames,
)

log = logging.getLogger("paystream.gateway")
_ENCODED = SUBSCRIPTION_PAYLOADS.labels("encoded")

DROP = "paystream.drop_connection"
CONTEXT = "paystream.context"
TRANSPORT = "paystream.transport"


class TransportMiddleware:
    """Outermost ASGI layer: remembers a websocket's transport in its scope. uvicorn passes
    its protocol's bound ``send`` as the ASGI send callable; on servers that do not, there
    is no transport and only the subscriber queue bound applies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if hasattr(transport, "get_write_buffer_size"):
                scope[TRANSPORT] = transport
            protocol = protocol_of(send)
            if protocol is not None:
                scope[PROTOCOL] = protocol  # frames below Strawberry (gateway/frames.py)
        await self.app(scope, receive, send)


def transport_of(websocket: WebSocket) -> asyncio.WriteTransport | None:
    return websocket.scope.get(TRANSPORT)


def drop(websocket: WebSocket, reason: str) -> None:
    """Cut the connection now: the handler task is cancelled and the socket aborted."""
    log.warning("subscriber dropped: %s", reason)
    transport = transport_of(websocket)
    if transport is not None:
        transport.abort()
    cancel = websocket.scope.get(DROP)
    if cancel is not None:
        cancel()


_OPERATION_FIELDS: dict[str, tuple[type, ...]] = {
    "query": (str,), "variables": (dict, type(None)), "operationName": (str, type(None)),
    "extensions": (dict, type(None)),
}


def well_formed(message: object) -> bool:
    """Whether a decoded message has the shape both protocols' handlers assume: Strawberry
    indexes ``type``, hashes ``id`` and reads the operation's fields without checking, so a
    message such as ``{"id": {}}`` or one without a type crashed the connection's handler."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return False
    if not isinstance(message.get("id", ""), str):
        return False
    if message["type"] in ("subscribe", "start"):
        payload = message.get("payload")
        if not isinstance(payload, dict):
            return False
        return all(isinstance(payload.get(k), types) for k, types in _OPERATION_FIELDS.items())
    return True


class BoundedWebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's adapter, refusing to buffer more than a limit for a client, and passing on
    only well-formed messages: a malformed one is an invalid message (graphql-transport-ws
    closes with 4400) or, where the protocol ignores what it cannot parse (graphql-ws), skipped."""

    max_buffered_bytes = 1 << 20

    def __init__(self, view: Any, request: WebSocket, response: WebSocket) -> None:
        super().__init__(view, request, response)
        self._transport = transport_of(response)
        self._frames: SocketFrames | None = socket_frames(response)

    def direct_operation(self, message: dict[str, object]) -> DirectOperation | None:
        """Frames for one operation, ``message`` (without its payload) around each payload;
        None when the server's websocket protocol is not one frames can be written to."""
        if self._frames is None:
            return None
        return DirectOperation(self._frames, frame_prefix(self.view.encode_json, message))

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        async for message in super().iter_json(ignore_parsing_errors=ignore_parsing_errors):
            if well_formed(message):
                yield message
            elif not ignore_parsing_errors:
                raise NonJsonMessageReceived

    async def send_json(self, message: Mapping[str, object]) -> None:
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > self.max_buffered_bytes:
            drop(self.ws, f"{transport.get_write_buffer_size()} bytes unread")
            return
        if message.get("type") in ("next", "data"):
            _ENCODED.inc()  # an update's payload, encoded with its message (below)
        await super().send_json(message)


def subscription_limit_error(limit: int) -> GraphQLFormattedError:
    """The error for a subscribe past ``limit`` on one connection. Strawberry's says only
    "Subscription limit reached", with no ``extensions.code``; ours is QUERY_TOO_COMPLEX with
    ``limit: "subscriptions"``, like the other request limits (docs/decisions.md)."""
    error = QueryTooComplex(
        f"subscription limit reached: at most {limit} subscriptions per connection",
        extensions={"limit": "subscriptions", "max": limit},
    )
    return GraphQLError(error.message, extensions=error.graphql_extensions()).formatted


async def subscribe_refusal(view: Any, context: Any) -> GraphQLFormattedError | None:
    """RATE_LIMITED (with ``retryAfter``) when the caller's key has no subscribe token left,
    else None. Taken after the per-connection cap, so a subscribe refused there costs none."""
    caller = getattr(context, "caller", None)
    gate = getattr(view, "gate", None)
    if caller is None or gate is None:
        return None
    wait = await gate.limiter.retry_after("subscription", f"key:{caller.key_id}")
    if wait is None:
        return None
    RATE_LIMITED.labels("subscription").inc()
    seconds = round(wait, 3)
    error = RateLimited(f"rate limit for subscribe messages reached; retry in {seconds} s",
                        retry_after_seconds=seconds)
    return GraphQLError(error.message, extensions=error.graphql_extensions()).formatted


class _DirectOperations:
    """A handler's direct frames per running operation id (see :mod:`.frames`)."""

    def __init__(self) -> None:
        self._running: dict[str, DirectOperation] = {}

    def start(self, websocket: object, operation_id: str, message: dict[str, object]) -> None:
        """In the operation's task, before it subscribes: its frames for the executor and
        the resolvers (``schema/sharing.py``)."""
        if not isinstance(websocket, BoundedWebSocketAdapter):
            return
        frames = websocket.direct_operation(message)
        if frames is not None:
            self._running[operation_id] = frames
            OPERATION_FRAMES.set(frames)  # the task's own context

    def end(self, operation_id: str) -> None:
        """No frame for the operation from now on (it completed, or the client ended it)."""
        frames = self._running.pop(operation_id, None)
        if frames is not None:
            frames.open = False

    def ended(self, operation_id: str) -> None:
        """The operation's task is over: its frames, unless a new operation has the id."""
        frames = OPERATION_FRAMES.get()
        if isinstance(frames, DirectOperation):
            frames.open = False
            if self._running.get(operation_id) is frames:
                del self._running[operation_id]


class TransportWSHandler(BaseGraphQLTransportWSHandler[Any, None]):
    """graphql-transport-ws: the subscription limit answered with :func:`subscription_limit_error`,
    then the subscribe rate (:func:`subscribe_refusal`). Strawberry's own checks that come first
    (4401 before the acknowledgement, 4409 for an id in use) are left to it. Each operation
    runs with direct frames (``next`` messages)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct = _DirectOperations()

    async def run_operation(self, operation: Operation[Any, None]) -> None:
        self.direct.start(self.websocket, operation.id, {"id": operation.id, "type": "next"})
        try:
            await super().run_operation(operation)
        finally:
            self.direct.ended(operation.id)

    async def cleanup_operation(self, operation_id: str) -> None:
        self.direct.end(operation_id)
        await super().cleanup_operation(operation_id)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if self.connection_acknowledged and message["id"] not in self.operations:
            limit = self.max_subscriptions_per_connection
            refusal = (subscription_limit_error(limit)
                       if limit is not None and len(self.operations) >= limit
                       else await subscribe_refusal(self.view, self.context))
            if refusal is not None:
                await self.send_message(TransportErrorMessage(
                    id=message["id"], type="error", payload=[refusal]))
                return
        await super().handle_subscribe(message)


class LegacyWSHandler(BaseGraphQLWSHandler[Any, None]):
    """graphql-ws: the same limit and rate errors. A start that reuses a running id replaces
    that operation (Strawberry cleans it up first), so it is not counted against the limit.
    Each operation runs with direct frames (``data`` messages)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct = _DirectOperations()

    async def handle_async_results(self, operation_id: str, query: str,
                                   operation_name: str | None,
                                   variables: dict[str, object] | None) -> None:
        self.direct.start(self.websocket, operation_id, {"type": "data", "id": operation_id})
        try:
            await super().handle_async_results(operation_id, query, operation_name, variables)
        finally:
            self.direct.ended(operation_id)

    async def cleanup_operation(self, operation_id: str) -> None:
        self.direct.end(operation_id)
        await super().cleanup_operation(operation_id)

    async def handle_start(self, message: StartMessage) -> None:
        if self.connection_acknowledged:
            limit = self.max_subscriptions_per_connection
            # A replacing start is not counted against the cap, but it takes a token: it
            # costs what a new subscribe costs.
            refusal = (subscription_limit_error(limit)
                       if limit is not None and message["id"] not in self.tasks
                       and len(self.tasks) >= limit
                       else await subscribe_refusal(self.view, self.context))
            if refusal is not None:
                await self.send_message(ErrorMessage(type="error", id=message["id"],
                                                     payload=refusal))
                return
        await super().handle_start(message)

