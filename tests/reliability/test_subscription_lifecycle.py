"""Subscriptions end when they are ended: completed (or stopped) subscriptions stop streaming
and release everything, and a socket's subscribes are limited in rate, by its key's revocation
and by its lifetime. Against a real ``paystream api`` process of its own, so its metrics count
only this module's subscriptions."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from paystream.client import ACCOUNT_ACTIVITY, PAYMENT_STATUS, PaystreamClient

from .conftest import ApiProcess, Partner, start_api, stop_process

pytestmark = pytest.mark.integration

PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]


@pytest.fixture(scope="module")
async def lifecycle_api(server_env: dict[str, str], migrated: Any) -> AsyncIterator[ApiProcess]:
    # A burst past what the test sends on one key: the subscribe rate has its own test.
    process = start_api(server_env, PAYSTREAM_LIMITS__SUBSCRIBE_BURST="10000")
    try:
        await process.wait_ready()
        yield process
    finally:
        stop_process(process.process)


async def open_subscriptions(api: ApiProcess) -> float:
    async with httpx.AsyncClient(base_url=api.url) as http:
        text = (await http.get("/metrics")).text
    match = re.search(r"^paystream_open_subscriptions (\S+)$", text, re.MULTILINE)
    assert match, "paystream_open_subscriptions not exported"
    return float(match.group(1))


async def until_open_subscriptions(api: ApiProcess, expected: float, timeout: float = 10.0) -> None:
    """Polls the other process's gauge (no event crosses the process boundary) until it shows
    ``expected``, failing with the last value after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await open_subscriptions(api)) != expected:
        assert asyncio.get_running_loop().time() < deadline, \
            f"paystream_open_subscriptions stayed {value}, expected {expected}"
        await asyncio.sleep(0.05)


class Socket:
    """A raw connection speaking either protocol, keeping every message by operation id."""

    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws, self.protocol = ws, protocol
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, api: ApiProcess, key: str, protocol: str) -> Socket:
        ws = await connect(api.ws_url, subprotocols=[protocol])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"authorization": f"Bearer {key}"}}))
        while (message := json.loads(await ws.recv()))["type"] != "connection_ack":
            assert message["type"] == "ka", message
        return cls(ws, protocol)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                async with self._arrived:
                    self.messages.setdefault(message.get("id", ""), []).append(message)
                    self._arrived.notify_all()
        except ConnectionClosed:
            pass  # the close code is the socket's; closed_with() reads it

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any]) -> None:
        kind = "subscribe" if self.protocol == "graphql-transport-ws" else "start"
        await self.ws.send(json.dumps({"id": op_id, "type": kind,
                                       "payload": {"query": query, "variables": variables}}))

    async def complete(self, op_id: str) -> None:
        kind = "complete" if self.protocol == "graphql-transport-ws" else "stop"
        await self.ws.send(json.dumps({"id": op_id, "type": kind}))

    def data(self, op_id: str) -> list[dict[str, Any]]:
        return [m["payload"]["data"] for m in self.messages.get(op_id, [])
                if m["type"] in ("next", "data") and m["payload"].get("data")]

    async def wait_for(self, predicate: Any, timeout: float = 15.0) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(predicate), timeout)

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def pay(api: ApiProcess, partner: Partner, source: str, destination: str) -> dict[str, Any]:
    async with PaystreamClient(api.url, partner.key) as http:
        return await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount="1.00", currency="USD")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_completed_subscriptions_stop_streaming_and_release_everything(
    lifecycle_api: ApiProcess, worker: Any, make_partner: Any, protocol: str,
) -> None:
    """300 subscribe/complete pairs sent back to back, half paymentStatus (cancelled while it
    reads the primary) and half accountActivity: afterwards no completed id receives an
    update, the gauge counts only live subscriptions, the socket still answers new
    subscribes (up to its cap, not past it), and closing it leaves nothing open."""
    api = lifecycle_api
    await until_open_subscriptions(api, 0)
    partner = await make_partner()
    source, destination = await partner.account(balance="1000.00"), await partner.account()
    pending = await pay(api, partner, source, destination)
    socket = await Socket.open(api, partner.key, protocol)
    try:
        pairs = 300
        for n in range(pairs):
            if n % 2:
                await socket.subscribe(f"z{n}", ACCOUNT_ACTIVITY, {"id": source})
            else:
                await socket.subscribe(f"z{n}", PAYMENT_STATUS, {"id": pending["id"]})
            await socket.complete(f"z{n}")
        # A live subscription opened after the pairs: the connection still serves subscribes.
        await socket.subscribe("live", ACCOUNT_ACTIVITY, {"id": source})
        # accountActivity streams from the moment its watch is registered (the gauge counts
        # it then): a payment made before that is not part of it. The 300 pairs ahead of it
        # can take the server a while; paying at once raced the registration, and the live
        # subscription, rightly, never saw the payment.
        await until_open_subscriptions(api, 1)
        first = await pay(api, partner, source, destination)
        await socket.wait_for(lambda: any(d["accountActivity"]["id"] == first["id"]
                                          for d in socket.data("live")))
        # A second payment reaching "live" means the first one's events went to every watch
        # the hub had: a zombie would have received them by now.
        second = await pay(api, partner, source, destination)
        await socket.wait_for(lambda: any(d["accountActivity"]["id"] == second["id"]
                                          for d in socket.data("live")))
        zombies = {f"z{n}" for n in range(pairs) if any(
            (d.get("accountActivity") or {}).get("id") in (first["id"], second["id"])
            for d in socket.data(f"z{n}"))}
        assert zombies == set(), f"{len(zombies)} completed subscriptions still streaming"
        await until_open_subscriptions(api, 1)
        # The cap counts what runs: up to 100 live ones are accepted, the next is refused.
        for n in range(99):
            await socket.subscribe(f"cap{n}", ACCOUNT_ACTIVITY, {"id": source})
        await until_open_subscriptions(api, 100)
        await socket.subscribe("over", ACCOUNT_ACTIVITY, {"id": source})
        await socket.wait_for(lambda: socket.messages.get("over"))
        refusal = socket.messages["over"][0]
        assert refusal["type"] == "error", refusal
        assert "QUERY_TOO_COMPLEX" in json.dumps(refusal["payload"])
        assert not any(m["type"] == "error" for n in range(99)
                       for m in socket.messages.get(f"cap{n}", []))
    finally:
        await socket.close()
    await until_open_subscriptions(api, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_client_ends_a_subscription_its_caller_leaves(
    lifecycle_api: ApiProcess, worker: Any, make_partner: Any, protocol: str,
) -> None:
    """paystream.client: leaving an ``async for`` over a subscription early sends complete (or
    stop) and frees its queue; the connection carries on (it used to keep the subscription
    running on the server, and its queue filling, until the socket closed)."""
    from contextlib import aclosing

    from paystream.client import Subscriptions

    api = lifecycle_api
    await until_open_subscriptions(api, 0)
    partner = await make_partner()
    source, destination = await partner.account(balance="10.00"), await partner.account()
    async with Subscriptions(api.ws_url, partner.key, protocol) as ws:  # type: ignore[arg-type]
        op_id = await ws.start(ACCOUNT_ACTIVITY, {"id": source})
        async with aclosing(ws.results(op_id)) as updates:
            await until_open_subscriptions(api, 1)
            paid = await pay(api, partner, source, destination)
            async for data in updates:
                assert data["accountActivity"]["id"] == paid["id"]
                break
        assert ws.operations == []
        await until_open_subscriptions(api, 0)
        # The connection still serves: a payment's status to its end.
        statuses = [d["paymentStatus"]["status"] async for d in
                    ws.subscribe(PAYMENT_STATUS, {"id": paid["id"]})]
        assert statuses[-1] == "SUCCEEDED"
    assert ws.operations == []


async def closed_with(socket: Socket, timeout: float = 10.0) -> int | None:
    """The close code, once the server has closed the connection."""
    await asyncio.wait_for(asyncio.shield(socket._reader), timeout)
    return socket.ws.close_code


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscribes_are_rate_limited_per_key(
    server_env: dict[str, str], migrated: Any, make_partner: Any, protocol: str,
) -> None:
    """A burst of 5 and 0.5 a second: of 10 subscribes over two sockets of one key, 5 run and 5
    are refused with RATE_LIMITED and a retry hint; another key is not affected."""
    api = start_api(server_env, PAYSTREAM_LIMITS__SUBSCRIBE_BURST="5",
                    PAYSTREAM_LIMITS__SUBSCRIBE_RATE_PER_S="0.5")
    partner, other = await make_partner(), await make_partner()
    account, others = await partner.account(), await other.account()
    try:
        await api.wait_ready()
        sockets = [await Socket.open(api, partner.key, protocol) for _ in range(2)]
        ids = [f"s{n}" for n in range(10)]
        for n, op_id in enumerate(ids):
            await sockets[n % 2].subscribe(op_id, ACCOUNT_ACTIVITY, {"id": account})
        await until_open_subscriptions(api, 5)
        await sockets[0].wait_for(lambda: sum(
            op in s.messages for s in sockets for op in ids) == 5)
        refused = [s.messages[op][0] for s in sockets for op in ids if op in s.messages]
        assert len(refused) == 5
        for message in refused:
            assert message["type"] == "error", message
            errors = message["payload"] if isinstance(message["payload"], list) \
                else [message["payload"]]
            assert errors[0]["extensions"]["code"] == "RATE_LIMITED"
            assert errors[0]["extensions"]["retryAfter"] > 0
        fresh = await Socket.open(api, other.key, protocol)
        await fresh.subscribe("1", ACCOUNT_ACTIVITY, {"id": others})
        await until_open_subscriptions(api, 6)
        assert "1" not in fresh.messages
        for socket in (*sockets, fresh):
            await socket.close()
    finally:
        stop_process(api.process)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_revoked_keys_sockets_are_closed_within_a_second(
    lifecycle_api: ApiProcess, services: Any, make_partner: Any, protocol: str,
) -> None:
    from paystream.services.admin import revoke_key

    partner = await make_partner()
    account = await partner.account()
    socket = await Socket.open(lifecycle_api, partner.key, protocol)
    try:
        await socket.subscribe("1", ACCOUNT_ACTIVITY, {"id": account})
        await revoke_key(services.db, partner.key)
        revoked_at = asyncio.get_running_loop().time()
        # key_recheck_s is 1 s; the rest is slack for a loaded 2-core machine.
        assert await closed_with(socket, timeout=3.0) == 4403
        assert asyncio.get_running_loop().time() - revoked_at < 1.5
    finally:
        await socket.close()
    await until_open_subscriptions(lifecycle_api, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_socket_is_closed_at_its_maximum_lifetime(
    server_env: dict[str, str], migrated: Any, make_partner: Any, protocol: str,
) -> None:
    api = start_api(server_env, PAYSTREAM_SUBSCRIPTIONS__MAX_CONNECTION_LIFETIME_S="2")
    partner = await make_partner()
    account = await partner.account()
    try:
        await api.wait_ready()
        socket = await Socket.open(api, partner.key, protocol)
        opened = asyncio.get_running_loop().time()
        await socket.subscribe("1", ACCOUNT_ACTIVITY, {"id": account})
        assert await closed_with(socket, timeout=10.0) == 4000
        assert asyncio.get_running_loop().time() - opened >= 1.9
        assert socket.ws.close_reason == "connection lifetime reached; reconnect"
        await until_open_subscriptions(api, 0)
    finally:
        stop_process(api.process)
