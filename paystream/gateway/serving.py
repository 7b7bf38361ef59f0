"""How uvicorn serves the app: the options `paystream api` and `paystream dev` share, so a
limit set for one holds for the other."""

from __future__ import annotations

from typing import Any

from ..config import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` or ``uvicorn.Config`` (besides the app, the
    address and the process model, which each command chooses)."""
    return {
        "http": "httptools",
        "log_config": None,  # paystream's JSON logging (configure_logging) stays in charge
        "timeout_graceful_shutdown": settings.api.graceful_shutdown_s,
        # A websocket message is a GraphQL request too: the same size limit as a body
        # (uvicorn's default is 16 MiB), closed with 1009 before it is read whole.
        "ws_max_size": settings.limits.max_body_bytes,
        "ws_per_message_deflate": settings.subscriptions.per_message_deflate,
    }
