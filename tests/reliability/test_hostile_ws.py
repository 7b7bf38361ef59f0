"""Websocket abuse against a real ``paystream api`` process: each protocol violation is answered
with the protocol's close code, and after each one another client still gets its results.

graphql-transport-ws codes: 4400 invalid message, 4401 unauthorized (subscribe before the
connection is acknowledged), 4403 forbidden (a bad key), 4408 connection_init timeout, 4409
duplicate subscriber id, 4429 too many initialisation requests. A frame larger than the
request size limit is closed with 1009 (message too big) before it is parsed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from paystream.client import ACCOUNT_ACTIVITY, PAYMENT_STATUS, PaystreamClient, Subscriptions

from .conftest import ApiProcess, start_api, stop_process

pytestmark = pytest.mark.integration

TRANSPORT_WS = "graphql-transport-ws"


@pytest.fixture(scope="module")
async def abused(server_env: dict[str, str], migrated: Any) -> AsyncIterator[ApiProcess]:
    """An API process of its own (abuse must not disturb other tests), with a short
    connection_init timeout so the 4408 case is quick."""
    process = start_api(server_env, PAYSTREAM_SUBSCRIPTIONS__CONNECTION_INIT_TIMEOUT_S="1")
    try:
        await process.wait_ready()
        yield process
    finally:
        stop_process(process.process)


@pytest.fixture(scope="module")
async def settled(abused: ApiProcess, worker: Any, make_partner_module: Any) -> tuple[str, str]:
    """A partner key and one of its payments that has reached its terminal status."""
    partner = await make_partner_module()
    source, destination = await partner.account(), await partner.account()
    async with PaystreamClient(abused.url, partner.key) as http:
        payment = await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount="1.00", currency="USD")
    async with Subscriptions(abused.ws_url, partner.key) as ws:
        states = [d["paymentStatus"]["status"] async for d in ws.subscribe(
            PAYMENT_STATUS, {"id": payment["id"]})]
    assert states[-1] == "SUCCEEDED"
    return partner.key, payment["id"]


@pytest.fixture(scope="module")
def make_partner_module(services: Any) -> Any:
    from paystream.services.admin import new_partner
    from tests.integration.conftest import Partner

    async def make() -> Partner:
        name = f"partner-{uuid.uuid4().hex[:12]}"
        return Partner(name=name, key=await new_partner(services.db, name), services=services)

    return make


async def still_healthy(api: ApiProcess, key: str, payment_id: str) -> None:
    """Another client connects, subscribes and gets the payment's state and completion, and
    HTTP answers."""
    async with asyncio.timeout(10):
        async with Subscriptions(api.ws_url, key) as ws:
            states = [d["paymentStatus"]["status"] async for d in ws.subscribe(
                PAYMENT_STATUS, {"id": payment_id})]
        assert states == ["SUCCEEDED"]
        async with httpx.AsyncClient(base_url=api.url) as http:
            assert (await http.get("/healthz")).status_code == 200


async def raw(api: ApiProcess, protocol: str = TRANSPORT_WS, **options: Any) -> ClientConnection:
    return await connect(api.ws_url, subprotocols=[protocol], **options)  # type: ignore[list-item]


async def closed_with(ws: ClientConnection) -> int:
    """The close code the server sent, once it closed the connection."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    assert ws.close_code is not None
    return ws.close_code


async def init(ws: ClientConnection, key: str) -> None:
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"authorization": f"Bearer {key}"}}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"


def subscribe(op_id: str, query: str, variables: dict[str, Any]) -> str:
    return json.dumps({"id": op_id, "type": "subscribe",
                       "payload": {"query": query, "variables": variables}})


ABUSES = ["subscribe before init", "second init", "invalid JSON", "deep JSON", "binary frame",
          "no type", "unknown type", "init payload not an object", "no init at all",
          "subscribe without payload", "subscribe with a non-string id"]


@pytest.mark.parametrize("abuse", ABUSES)
async def test_protocol_violations_close_with_the_protocol_code(abused, settled, abuse: str) -> None:
    key, payment_id = settled
    expected = {"subscribe before init": 4401, "second init": 4429, "invalid JSON": 4400,
                "deep JSON": 4400, "binary frame": 4400, "no type": 4400, "unknown type": 4400,
                "init payload not an object": 4400, "no init at all": 4408,
                "subscribe without payload": 4400, "subscribe with a non-string id": 4400}[abuse]
    log_before = len(abused.log())
    ws = await raw(abused)
    try:
        if abuse == "subscribe before init":
            await ws.send(subscribe("1", PAYMENT_STATUS, {"id": payment_id}))
        elif abuse == "second init":
            await init(ws, key)
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        elif abuse == "invalid JSON":
            await ws.send('{"type": "connection_init", ')
        elif abuse == "deep JSON":
            await ws.send("[" * 100_000 + "]" * 100_000)
        elif abuse == "binary frame":
            await ws.send(b"\x00\x01 binary")
        elif abuse == "no type":
            await ws.send(json.dumps({"payload": {}}))
        elif abuse == "unknown type":
            await ws.send(json.dumps({"type": "start_the_fireworks"}))
        elif abuse == "init payload not an object":
            await ws.send(json.dumps({"type": "connection_init", "payload": "Bearer x"}))
        elif abuse == "subscribe without payload":
            await init(ws, key)
            await ws.send(json.dumps({"id": "1", "type": "subscribe"}))
        elif abuse == "subscribe with a non-string id":
            await init(ws, key)
            await ws.send(json.dumps({"id": {"$ne": 1}, "type": "subscribe",
                                      "payload": {"query": PAYMENT_STATUS}}))
        # "no init at all": send nothing; the server gives up after its init timeout.
        assert await closed_with(ws) == expected
    finally:
        await ws.close()
    await still_healthy(abused, key, payment_id)
    assert "Traceback" not in abused.log()[log_before:]


async def test_duplicate_subscriber_id_is_4409(abused, settled, make_partner_module) -> None:
    key, payment_id = settled
    partner = await make_partner_module()
    account = await partner.account()
    ws = await raw(abused)
    try:
        await init(ws, partner.key)
        # accountActivity never completes, so id "1" is still running when it comes again.
        await ws.send(subscribe("1", ACCOUNT_ACTIVITY, {"id": account}))
        await ws.send(subscribe("1", ACCOUNT_ACTIVITY, {"id": account}))
        assert await closed_with(ws) == 4409
    finally:
        await ws.close()
    await still_healthy(abused, key, payment_id)


async def test_a_frame_over_the_size_limit_is_closed_before_it_is_parsed(abused, settled) -> None:
    key, payment_id = settled
    ws = await raw(abused, max_size=None)
    try:
        await init(ws, key)
        frame = subscribe("1", "subscription { " + "x" * (1 << 20) + " }", {})
        await ws.send(frame)
        assert await closed_with(ws) == 1009
    finally:
        await ws.close()
    await still_healthy(abused, key, payment_id)


async def test_thousands_of_subscribes_are_capped_and_others_are_served(
    abused, settled, make_partner_module, settings
) -> None:
    key, payment_id = settled
    partner = await make_partner_module()
    account = await partner.account()
    cap = settings.subscriptions.max_per_connection
    ws = await raw(abused)
    try:
        await init(ws, partner.key)
        flood = 5000
        for n in range(flood):
            await ws.send(subscribe(str(n), ACCOUNT_ACTIVITY, {"id": account}))
        # Every subscribe past the cap is refused with an error for its id.
        refused: set[str] = set()
        async with asyncio.timeout(60):
            while len(refused) < flood - cap:
                message = json.loads(await ws.recv())
                if message["type"] == "error":
                    assert "limit" in json.dumps(message["payload"]).lower()
                    refused.add(message["id"])
        assert refused == {str(n) for n in range(cap, flood)}
        # Meanwhile (the flooding connection still open) another client is served.
        await still_healthy(abused, key, payment_id)
    finally:
        await ws.close()


@pytest.mark.parametrize("abuse", ["invalid JSON", "deep JSON", "no type", "id not a string",
                                   "start without query", "start before init", "binary frame"])
async def test_legacy_protocol_violations_close_or_are_ignored_and_others_are_served(
    abused, settled, abuse: str
) -> None:
    """graphql-ws (legacy) has fewer codes: what it cannot read is ignored, a start before init
    is 4401, a binary frame 1002; the connection must never take the server down."""
    key, payment_id = settled
    log_before = len(abused.log())
    ws = await raw(abused, "graphql-ws")
    try:
        if abuse == "invalid JSON":
            await ws.send("{nope")
        elif abuse == "deep JSON":
            await ws.send("[" * 100_000 + "]" * 100_000)
        elif abuse == "no type":
            await ws.send(json.dumps({"id": "1"}))
        elif abuse == "id not a string":
            await ws.send(json.dumps({"id": ["1"], "type": "stop"}))
        elif abuse == "start without query":
            await ws.send(json.dumps({"id": "1", "type": "start", "payload": {"query": 7}}))
        elif abuse == "start before init":
            await ws.send(json.dumps({"id": "1", "type": "start",
                                      "payload": {"query": PAYMENT_STATUS, "variables": {"id": payment_id}}}))
        elif abuse == "binary frame":
            await ws.send(b"\x00")
        if abuse in ("start before init", "binary frame"):
            assert await closed_with(ws) == (4401 if abuse == "start before init" else 1002)
        else:
            # Ignored: the connection still works after it.
            await init(ws, key)
    finally:
        await ws.close()
    await still_healthy(abused, key, payment_id)
    assert "Traceback" not in abused.log()[log_before:]
