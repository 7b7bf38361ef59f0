"""The Starlette application: /graphql over HTTP and websocket, health and readiness."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError

from ..config import Settings
from ..domain.errors import PaystreamError
from ..metrics import CONTENT_TYPE_LATEST, render, watch_cache
from ..resolvers.context import Context
from ..resolvers.loaders import Loaders
from ..schema import build_schema
from ..services.app import Services
from .health import readiness
from .middleware import BodyLimitMiddleware, RequestIdMiddleware, request_id_of
from .operations import GatedOperations
from .production import check_production

log = logging.getLogger("paystream.gateway")


class PaystreamGraphQL(GatedOperations, GraphQL[Context, None]):
    """Strawberry's ASGI view with paystream's context and websocket authentication."""

    def __init__(self, services: Services) -> None:
        settings = services.settings
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if settings.dev else None,
            allow_queries_via_get=True,
        )
        self.set_up_gate(services)
        self.services = services

    async def get_context(self, request: Any, response: Any) -> Context:
        context = Context(
            services=self.services,
            loaders=Loaders(self.services.reader),
            request_id=request_id_of(request.scope),
            request=request,
            response=response,
        )
        if isinstance(request, Request):
            authorization = request.headers.get("authorization")
            if authorization is not None:
                # A bad key fails the operation that needs it, with UNAUTHENTICATED.
                try:
                    context.caller = await self.services.auth.caller_for(authorization)
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
        except PaystreamError as exc:
            raise ConnectionRejectionError({"code": exc.code.value, "message": exc.message}) from exc


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The ASGI app. ``services`` may be given (tests); otherwise built from ``settings``."""
    services = services or Services.create(settings)
    graphql = PaystreamGraphQL(services)
    watch_cache(lambda: (services.cache.hits, services.cache.misses))

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
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    async def metrics(request: Request) -> Response:
        return Response(render(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(CORSMiddleware, allow_origins=settings.api.cors_origins,
                       allow_methods=["GET", "POST"],
                       allow_headers=["authorization", "content-type", "x-request-id"],
                       expose_headers=["x-request-id", "retry-after"], max_age=600),
            Middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes),
        ],
    )
    app.state.services = services
    return app


__all__ = ["create_app", "WebSocket"]
