"""The app behind a real uvicorn server configured as `paystream dev` and `paystream api`
configure theirs (`paystream.gateway.serving`), over real sockets: slow request bodies hold no
execution slot, a websocket frame over the size limit is refused with 1009, and a subscribe
past the per-connection limit carries a stable error code."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from paystream.client import ACCOUNT_ACTIVITY

from ._gateway import served

pytestmark = pytest.mark.integration

SLOW_HEAD = (b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
             b"Content-Length: 1000\r\n\r\n{")


async def test_slow_bodies_take_no_execution_slot_and_are_answered_408(settings, make_partner) -> None:
    partner = await make_partner()
    account = await partner.account()
    slots = 4
    api = {"max_in_flight": slots, "queue_timeout_s": 1.0, "body_read_timeout_s": 2.0}
    async with served(settings, api=api) as url:
        port = int(url.rsplit(":", 1)[1])
        # Three times as many connections as slots, each sending one byte of a 1,000-byte body.
        slow = []
        for _ in range(3 * slots):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(SLOW_HEAD)
            await writer.drain()
            slow.append((reader, writer))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                # A round trip through the server first: by its end the server has taken the
                # slow requests' heads, sent before (uvicorn offers nothing to await for that).
                assert (await http.get("/healthz")).status_code == 200
                response = await http.post(
                    "/graphql", headers={"Authorization": f"Bearer {partner.key}"},
                    json={"query": "query($id: ID!) { account(id: $id) { id } }",
                          "variables": {"id": account}})
            assert response.status_code == 200, response.text
            assert response.json() == {"data": {"account": {"id": account}}}
            # Each slow sender is answered 408 once its deadline passes, and disconnected.
            for reader, _ in slow:
                async with asyncio.timeout(30):
                    answer = await reader.read()  # to EOF: the server closed the connection
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
                assert b"connection: close" in answer.lower()
        finally:
            for _, writer in slow:
                writer.close()


async def test_a_websocket_frame_over_the_body_limit_is_closed_1009(settings) -> None:
    async with served(settings) as url:
        ws_url = url.replace("http://", "ws://") + "/graphql"
        async with connect(ws_url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                           max_size=None) as ws:
            frame = json.dumps({"type": "connection_init", "payload": {"pad": "x" * (300 << 10)}})
            await ws.send(frame)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        await ws.recv()
            assert ws.close_code == 1009


def subscribe_message(protocol: str, op_id: str, account: str) -> str:
    kind = "subscribe" if protocol == "graphql-transport-ws" else "start"
    return json.dumps({"id": op_id, "type": kind,
                       "payload": {"query": ACCOUNT_ACTIVITY, "variables": {"id": account}}})


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_subscribes_past_the_limit_are_query_too_complex(settings, make_partner,
                                                               protocol: str) -> None:
    partner = await make_partner()
    account = await partner.account()
    limit = 2
    async with served(settings, subscriptions={"max_per_connection": limit}) as url:
        ws_url = url.replace("http://", "ws://") + "/graphql"
        async with connect(ws_url, subprotocols=[protocol]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"authorization": f"Bearer {partner.key}"}}))
            async with asyncio.timeout(10):
                while json.loads(await ws.recv())["type"] != "connection_ack":
                    pass  # graphql-ws may send a keep-alive first
            ids = [uuid.uuid4().hex for _ in range(limit + 1)]
            for op_id in ids:
                await ws.send(subscribe_message(protocol, op_id, account))
            error: dict[str, Any] | None = None
            async with asyncio.timeout(10):
                while error is None:
                    message = json.loads(await ws.recv())
                    if message["type"] == "error":
                        error = message
    assert error["id"] == ids[-1]  # the first `limit` subscriptions were taken
    payload = error["payload"]
    formatted = payload[0] if protocol == "graphql-transport-ws" else payload
    assert formatted["extensions"] == {"code": "QUERY_TOO_COMPLEX", "limit": "subscriptions",
                                       "max": limit}
    assert "subscription limit" in formatted["message"]
