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


@asynccontextmanager
async def served(settings: Settings, **sections: Any) -> AsyncIterator[str]:
    """The app with changed settings behind a real uvicorn server on a free port, in this event
    loop, configured as `paystream dev` and `paystream api` configure theirs
    (:func:`paystream.gateway.serving.uvicorn_options`); yields its base URL."""
    import asyncio

    import uvicorn

    from paystream.devstack import free_port
    from paystream.gateway.serving import uvicorn_options

    custom = changed(settings, **sections)
    port = free_port()
    config = uvicorn.Config(create_app(custom), host="127.0.0.1", port=port, lifespan="on",
                            **uvicorn_options(custom))
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not server.started:  # uvicorn offers a flag, no event to await
            assert not serving.done(), "uvicorn exited"
            assert asyncio.get_running_loop().time() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
