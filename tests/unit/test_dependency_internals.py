"""Where paystream hooks into a dependency's internals, a test that fails loudly, naming the
hook, when an upgrade moves it (instead of the hook silently doing nothing)."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import pytest
import strawberry


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


async def test_uvicorn_protocol_takes_frames_written_below_the_asgi_send() -> None:
    """gateway/frames.py writes subscription frames into uvicorn's sans-I/O websocket protocol
    (``send.__self__.conn``, a websockets ``Protocol``, then ``transport.write``), below the
    ASGI send. They must reach the client, compressed when permessage-deflate is on, and in
    order with what the ASGI send writes after them."""
    import uvicorn
    from websockets.asyncio.client import connect

    from paystream.devstack import free_port
    from paystream.gateway.frames import PROTOCOL, SocketFrames
    from paystream.gateway.websocket import TransportMiddleware

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]  # a bare ASGI app
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "websocket.accept"})
        frames = SocketFrames(scope[PROTOCOL])
        assert frames.ready()
        frames.write(b'{"n":1}')
        frames.write(b'{"n":2}')
        await send({"type": "websocket.send", "text": '{"n":3}'})
        frames.write(b'{"n":4}')
        await asyncio.sleep(0)  # the flush of the last one: the loop's next turn
        await send({"type": "websocket.close"})

    for deflate in (True, False):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(TransportMiddleware(app), host="127.0.0.1",
                                               port=port, log_level="warning",
                                               ws_per_message_deflate=deflate))
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:  # uvicorn offers a flag, no event to await
                assert not serving.done(), "uvicorn exited"
                await asyncio.sleep(0.01)
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                assert (ws.response.headers.get("Sec-WebSocket-Extensions") is not None) is deflate
                assert [json.loads(m)["n"] async for m in ws] == [1, 2, 3, 4]
        finally:
            server.should_exit = True
            await serving


def test_strawberry_handlers_still_run_each_operation_through_the_methods_we_override() -> None:
    """gateway/websocket.py gives each operation its direct frames in ``run_operation``
    (graphql-transport-ws) and ``handle_async_results`` (graphql-ws), the methods Strawberry
    runs as the operation's task, and ends them in ``cleanup_operation``."""
    from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
        BaseGraphQLTransportWSHandler,
    )
    from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

    from paystream.gateway.websocket import LegacyWSHandler, TransportWSHandler

    transport, legacy = BaseGraphQLTransportWSHandler, BaseGraphQLWSHandler
    assert list(inspect.signature(transport.run_operation).parameters) == ["self", "operation"]
    assert "asyncio.create_task(self.run_operation(operation))" in inspect.getsource(
        transport.handle_subscribe)
    assert list(inspect.signature(legacy.handle_async_results).parameters) == [
        "self", "operation_id", "query", "operation_name", "variables"]
    assert "self.handle_async_results(" in inspect.getsource(legacy.handle_start)
    for base, ends in ((transport, ("handle_complete", "shutdown")),
                       (legacy, ("handle_stop", "cleanup"))):
        assert list(inspect.signature(base.cleanup_operation).parameters) == [
            "self", "operation_id"]
        for caller in ends:
            assert "self.cleanup_operation(" in inspect.getsource(getattr(base, caller))
    assert TransportWSHandler.run_operation is not transport.run_operation
    assert LegacyWSHandler.handle_async_results is not legacy.handle_async_results


async def test_direct_frames_are_the_bytes_strawberrys_handlers_send() -> None:
    """A direct frame is the operation's prefix (``frame_prefix`` of the view's encoding),
    the payload of ``encode_payload`` and ``}``. Strawberry's handlers build their update
    messages themselves (``Operation.send_next``, ``send_data_message``); if they change
    their shape, the direct frames would differ from theirs."""
    from graphql import ExecutionResult
    from strawberry.http.base import BaseView
    from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation
    from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

    from paystream.gateway.frames import frame_prefix
    from paystream.schema.sharing import encode_payload

    result = ExecutionResult(data={"accountActivity": {"id": "p-1", "reference": "é \"x\"",
                                                       "balance": None}})
    sent: list[object] = []

    class Handler:
        def forget_id(self, op_id: str) -> None:
            pass

        async def send_message(self, message: object) -> None:
            sent.append(message)

    await Operation(Handler(), "op 1", "", None, None).send_next(result)  # type: ignore[arg-type]  # a stand-in handler
    await BaseGraphQLWSHandler.send_data_message(Handler(), result, "op 2")  # type: ignore[arg-type]  # the same
    encode = BaseView.encode_json.__get__(object())
    expected = [frame_prefix(encode, {"id": "op 1", "type": "next"}),
                frame_prefix(encode, {"type": "data", "id": "op 2"})]
    for message, prefix in zip(sent, expected, strict=True):
        assert encode(message).encode() == prefix + encode_payload(result) + b"}"


@strawberry.type
class _Thing:
    name: str
    executions: strawberry.Private[dict[object, object]] = field(default_factory=dict)


@strawberry.type
class _Query:
    ok: bool = True


@strawberry.type
class _Subscription:
    @strawberry.subscription
    async def things(self, prefix: str) -> AsyncGenerator[_Thing, None]:
        yield _Thing(name=f"{prefix} one")


@dataclass
class _Caller:
    partner_id: str = "p"
    scopes: frozenset[str] = frozenset({"payments:read"})


@dataclass
class _Context:
    caller: _Caller = field(default_factory=_Caller)


async def test_graphql_core_builds_a_subscriptions_executor_in_the_operations_task() -> None:
    """schema/sharing.py records a subscription's executor when graphql-core builds it
    (``SharedEventExecutor.build``, which Strawberry's subscribe runs in the operation's
    task, as ``executor_class.build``) and executes updates on it as graphql-core does per
    event (``build_per_event_executor(...).execute_operation(False)``): the direct payload
    must be what the subscription's own stream yields."""
    from paystream.schema.sharing import (
        OPERATION_FRAMES,
        OperationFrames,
        SharedEventExecutor,
        direct_payload,
        encode_payload,
    )

    schema = strawberry.Schema(query=_Query, subscription=_Subscription,
                               execution_context_class=SharedEventExecutor)
    frames = OperationFrames()

    async def operation() -> object:
        OPERATION_FRAMES.set(frames)  # as the websocket handlers do, in the operation's task
        stream = await schema.subscribe('subscription { things(prefix: "a") { name } }',
                                        context_value=_Context())
        async for result in stream:  # type: ignore[union-attr]  # a stream, not an error
            return result
        raise AssertionError("no result")

    streamed = await asyncio.create_task(operation())
    assert isinstance(frames.executor, SharedEventExecutor)
    update = _Thing(name="b two")
    payload = direct_payload(frames, update, lambda: None)
    assert payload == b'{"data":{"things":{"name":"b two"}}}'
    assert encode_payload(streamed) == b'{"data":{"things":{"name":"a one"}}}'  # type: ignore[arg-type]  # Strawberry's ExecutionResult has data too
    assert direct_payload(frames, update, lambda: None) is payload  # encoded once
