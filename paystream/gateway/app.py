"""The Starlette application: /graphql over HTTP and websocket, health and readiness, and the
status page for frontends (``/status/...``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from functools import partial
from typing import Any, cast

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UNSET

from ..config import Settings
from ..domain.errors import PaystreamError, Unavailable
from ..metrics import CONTENT_TYPE_LATEST, record_readiness, render, watch_cache
from ..resolvers.schema import build_schema
from ..schema.context import Context
from ..schema.loaders import Loaders
from ..services.app import Services
from .admission import AdmissionMiddleware
from .health import readiness
from .middleware import (
    BodyLimitMiddleware,
    RequestIdMiddleware,
    ResponseHeadersMiddleware,
    request_id_of,
)
from .operations import GatedOperations
from .production import check_production
from .request_body import decode_json, parse_request_json
from .status_page import status_page_routes
from .websocket import (
    CONTEXT,
    DROP,
    BoundedWebSocketAdapter,
    LegacyWSHandler,
    TransportMiddleware,
    TransportWSHandler,
    drop,
)

log = logging.getLogger("paystream.gateway")


class PaystreamGraphQL(GatedOperations, GraphQL[Context, None]):
    """Strawberry's ASGI view with paystream's context and websocket authentication."""

    websocket_adapter_class = BoundedWebSocketAdapter
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, services: Services) -> None:
        settings = services.settings
        subscriptions = settings.subscriptions
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if settings.dev else None,
            allow_queries_via_get=True,
            keep_alive=True,  # graphql-ws "ka" messages; graphql-transport-ws clients ping
            keep_alive_interval=15,
            connection_init_wait_timeout=timedelta(seconds=subscriptions.connection_init_timeout_s),
            max_subscriptions_per_connection=subscriptions.max_per_connection,
        )
        self.set_up_gate(services)
        self.services = services
        self.websocket_adapter_class = type(  # type: ignore[assignment]  # a subclass
            "WebSocketAdapter", (BoundedWebSocketAdapter,),
            {"max_buffered_bytes": subscriptions.max_buffered_bytes},
        )

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        if not isinstance(request, WebSocket):
            return await super().run(request, context, root_value)
        # The protocol handler runs in its own task so that a subscriber too slow to keep up
        # can be cut off: its sends are stuck behind a full socket buffer, so closing it
        # politely would wait forever. Its subscriptions end; the socket is closed.
        # The connection's watchdog ends it too: its key revoked, or its lifetime reached.
        dropped = asyncio.Event()
        request.scope[DROP] = dropped.set
        handler = asyncio.create_task(super().run(request, context, root_value))
        dropping = asyncio.create_task(dropped.wait())
        watchdog = asyncio.create_task(self._watch_connection(request))
        try:
            await asyncio.wait({handler, dropping, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            dropping.cancel()
            watchdog.cancel()
            if not handler.done():
                handler.cancel()
                with suppress(asyncio.CancelledError):
                    await handler
        if watchdog.done() and not watchdog.cancelled() and watchdog.exception() is None:
            code, reason = watchdog.result()
            # Its subscriptions have ended (the handler is done); then the socket.
            with suppress(RuntimeError, OSError):
                await request.close(code=code, reason=reason)
        return request

    async def _watch_connection(self, websocket: WebSocket) -> tuple[int, str]:
        """Returns the close code and reason once the socket must end: 4403 when its API key
        no longer authenticates (looked up every ``key_recheck_s``), 4000 when it has been
        open ``max_connection_lifetime_s`` (clients reconnect and get the current state)."""
        subscriptions = self.services.settings.subscriptions
        loop = asyncio.get_running_loop()
        deadline = loop.time() + subscriptions.max_connection_lifetime_s
        while True:
            # Timers, not synchronisation: the key's revocation is another process's commit.
            await asyncio.sleep(max(0.0, min(subscriptions.key_recheck_s, deadline - loop.time())))
            if loop.time() >= deadline:
                return 4000, "connection lifetime reached; reconnect"
            context = websocket.scope.get(CONTEXT)
            if isinstance(context, Context) and context.caller is not None:
                params = context.connection_params or {}
                authorization = params.get("authorization") or params.get("Authorization")
                try:
                    caller = await self.services.auth.caller_for(
                        authorization if isinstance(authorization, str) else None)
                    if caller != context.caller:
                        # Kept when unchanged: subscriptions key their audience by it.
                        context.caller = caller
                except Unavailable:
                    pass  # cannot check now (no database): the key stays as it was
                except PaystreamError:
                    log.info("websocket closed: its API key no longer authenticates")
                    return 4403, "Forbidden: API key revoked"

    def decode_json(self, data: str | bytes) -> object:
        """Websocket messages: nesting past the recursion limit is invalid JSON too."""
        try:
            return json.loads(data)
        except RecursionError as exc:
            raise json.JSONDecodeError("nested too deeply", "", 0) from exc

    def parse_json(self, data: str | bytes) -> Any:
        """Strawberry passes a POST body as bytes (checked whole, see :mod:`.request_body`)
        and a GET request's ``variables`` or ``extensions`` parameter as text (decoded only;
        Strawberry checks their types)."""
        return parse_request_json(data) if isinstance(data, bytes) else decode_json(data)

    async def get_context(self, request: Any, response: Any) -> Context:
        context = Context(
            services=self.services,
            loaders=Loaders(self.services.reader),
            request_id=request_id_of(request.scope),
            request=request,
            response=response,
        )
        if isinstance(request, WebSocket):
            context.drop_connection = partial(drop, request, "too many events queued")
            request.scope[CONTEXT] = context  # for the connection's watchdog
        elif isinstance(request, Request):
            authorization = request.headers.get("authorization")
            if authorization is not None:
                # A bad key fails the operation that needs it, with UNAUTHENTICATED.
                try:
                    context.caller = await self.services.auth.caller_for(authorization)
                except Unavailable:
                    # No database answered the key lookup, or none had a free connection:
                    # the operation that needs the caller fails with UNAVAILABLE.
                    context.auth_failure = Unavailable("cannot check the API key now; retry")
                except PaystreamError:
                    context.caller = None
        return context

    async def on_ws_connect(self, context: Context) -> None:
        params = context.connection_params or {}
        authorization = params.get("authorization") or params.get("Authorization")
        try:
            context.caller = await self.services.auth.caller_for(
                authorization if isinstance(authorization, str) else None
            )
        except Unavailable:
            raise ConnectionRejectionError({"code": "UNAVAILABLE",
                                            "message": "cannot check the API key now; retry"})
        except PaystreamError as exc:
            raise ConnectionRejectionError({"code": exc.code.value, "message": exc.message}) from exc


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The ASGI app. ``services`` may be given (tests); otherwise built from ``settings``."""
    services = services or Services.create(settings)
    graphql = PaystreamGraphQL(services)
    watch_cache(lambda: (services.cache.hits, services.cache.misses, services.cache.page_hits,
                         services.cache.page_misses))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await check_production(services)
        await services.start()
        try:
            yield
        finally:
            await services.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        report = await readiness(services)
        record_readiness(cast(dict[str, bool], report["checks"]))
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    async def metrics(request: Request) -> Response:
        # Readiness as /readyz would answer now (each check bounded to 2 s, the outbox backlog
        # gauges with it), so an alert does not depend on something else polling /readyz.
        record_readiness(cast(dict[str, bool], (await readiness(services))["checks"]))
        return Response(render(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *status_page_routes(),
        ],
        lifespan=lifespan,
        middleware=[
            # Outermost: it needs the server's own send callable (see gateway.websocket).
            Middleware(TransportMiddleware),
            Middleware(ResponseHeadersMiddleware),
            Middleware(RequestIdMiddleware),
            Middleware(CORSMiddleware, allow_origins=settings.api.cors_origins,
                       allow_methods=["GET", "POST"],
                       allow_headers=["authorization", "content-type", "x-request-id"],
                       expose_headers=["x-request-id", "retry-after"], max_age=600),
            # The body is read (within its size and time limits) before admission: a client
            # that sends slowly holds its connection, not one of the execution slots.
            Middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes,
                       read_timeout_s=settings.api.body_read_timeout_s),
            Middleware(AdmissionMiddleware, max_in_flight=settings.api.max_in_flight,
                       queue_timeout_s=settings.api.queue_timeout_s),
        ],
    )
    app.state.services = services
    return app


__all__ = ["WebSocket", "create_app"]
