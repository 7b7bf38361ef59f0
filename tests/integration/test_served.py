"""The app behind a real uvicorn server configured as `paystream dev` and `paystream api`
configure theirs (`paystream.gateway.serving`), over real sockets: a websocket frame over the
size limit is refused with 1009."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ._gateway import served

pytestmark = pytest.mark.integration


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
