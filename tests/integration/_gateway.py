"""A fresh app with changed settings, for gateway tests that need their own limits or mode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from paystream.config import Settings
from paystream.gateway.app import create_app
from paystream.services.app import Services


def changed(settings: Settings, **sections: Any) -> Settings:
    """``settings`` with some fields replaced; a dict value updates that nested section."""
    update: dict[str, Any] = {}
    for name, value in sections.items():
        current = getattr(settings, name)
        update[name] = current.model_copy(update=value) if isinstance(value, dict) else value
    return settings.model_copy(update=update)


@asynccontextmanager
async def app_client(settings: Settings, **sections: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    custom = changed(settings, **sections)
    services = Services.create(custom)
    app = create_app(custom, services)
    await services.start()  # ASGITransport runs no lifespan
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as http:
            yield http, services
    finally:
        await services.close()
