"""ASGI entry point for uvicorn workers: ``uvicorn --factory paystream.gateway.asgi:app``."""

from __future__ import annotations

from starlette.applications import Starlette

from .. import heap, tracing
from ..config import Settings
from ..logging import configure_logging
from .app import create_app


def app() -> Starlette:
    """Build the app from the environment's settings (each uvicorn worker calls this once)."""
    settings = Settings()
    configure_logging(settings)
    tracing.configure(settings, "api")
    app = create_app(settings)
    heap.settle()  # the schema and the services are built: out of the collector's sight
    return app
