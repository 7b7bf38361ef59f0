"""Where paystream hooks into a dependency's internals, a test that fails loudly, naming the
hook, when an upgrade moves it (instead of the hook silently doing nothing)."""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest


def test_strawberry_still_runs_each_http_operation_through_execute_single() -> None:
    """gateway/operations.py overrides ``execute_single`` to pass every HTTP operation through
    the gate (limits, rate limits, persisted queries). Renamed or re-signed upstream, the
    override would be dead code and the gate bypassed."""
    from strawberry.http.async_base_view import AsyncBaseHTTPView

    from paystream.gateway.app import PaystreamGraphQL
    from paystream.gateway.operations import GatedOperations

    upstream = inspect.signature(AsyncBaseHTTPView.execute_single)
    assert list(upstream.parameters) == ["self", "request", "request_adapter", "sub_response",
                                         "context", "root_value", "request_data"]
    assert inspect.iscoroutinefunction(AsyncBaseHTTPView.execute_single)
    # ...and ours is the one the view resolves.
    assert PaystreamGraphQL.execute_single is GatedOperations.execute_single
    # The base view still calls it (by name) when it runs a request.
    source = inspect.getsource(AsyncBaseHTTPView)
    assert "self.execute_single(" in source


async def test_uvicorn_websocket_send_is_bound_to_a_protocol_with_a_transport() -> None:
    """gateway/websocket.py finds a socket's transport as ``send.__self__.transport`` (to read
    its write buffer and drop slow readers). Served by uvicorn, the scope must carry it."""
    import uvicorn
    from websockets.asyncio.client import connect

    from paystream.devstack import free_port
    from paystream.gateway.websocket import TRANSPORT, TransportMiddleware

    found: dict[str, object] = {}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]  # a bare ASGI app
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        found["transport"] = scope.get(TRANSPORT)
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(TRANSPORT in scope)})
        await send({"type": "websocket.close"})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(TransportMiddleware(app), host="127.0.0.1",
                                           port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn offers a flag, no event to await
            assert not serving.done(), "uvicorn exited"
            await asyncio.sleep(0.01)
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert json.loads(await ws.recv()) is True
    finally:
        server.should_exit = True
        await serving
    assert hasattr(found["transport"], "get_write_buffer_size")


@pytest.mark.parametrize("module", ["paystream.services.status_hub", "paystream.events.lag",
                                    "paystream.worker.redrive"])
async def test_aiokafka_consumer_still_has_a_client_that_refreshes_metadata(module: str) -> None:
    """Three places refresh a consumer's metadata through ``consumer._client`` (aiokafka has
    no public way to)."""
    import importlib

    from aiokafka import AIOKafkaConsumer

    assert "consumer._client.force_metadata_update()" in inspect.getsource(
        importlib.import_module(module))
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    try:
        # A plain method returning a future (awaited by the callers).
        assert callable(consumer._client.force_metadata_update)
        assert "force_metadata_update" in type(consumer._client).__dict__
    finally:
        await consumer.stop()
