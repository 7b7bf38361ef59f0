"""paymentStatus and accountActivity over both websocket protocols, against real API processes,
the real worker and the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import DBAPIError

from paystream.client import (
    ACCOUNT_ACTIVITY,
    PAYMENT_STATUS,
    GraphQLErrors,
    PaystreamClient,
    Subscriptions,
)

from .conftest import (
    ApiProcess,
    Partner,
    start_api,
    start_worker,
    stop_process,
    wait_for_replay,
)

PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]


@contextmanager
def held(worker: subprocess.Popen[bytes]) -> Iterator[None]:
    """The worker stopped (SIGSTOP) for the block: payments stay PENDING until it ends."""
    worker.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        worker.send_signal(signal.SIGCONT)


async def pay(api: ApiProcess, partner: Partner, source: str, destination: str,
              amount: str = "10.00") -> dict[str, Any]:
    async with PaystreamClient(api.url, partner.key) as http:
        return await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount=amount, currency="USD",
        )


async def collect(stream: Any, field: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every payload until the subscription completes."""

    async def run() -> list[dict[str, Any]]:
        return [data[field] async for data in stream]

    return await asyncio.wait_for(run(), timeout)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("amount", "status", "reason"), [
    ("10.00", "SUCCEEDED", None), ("500.00", "FAILED", "INSUFFICIENT_FUNDS"),
])
async def test_payment_status_from_pending_to_terminal(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any,
    protocol: str, amount: str, status: str, reason: str | None,
) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="100.00"), await partner.account(balance="0")
    async with Subscriptions(api.ws_url, partner.key, protocol) as ws:  # type: ignore[arg-type]
        with held(worker):
            payment = await pay(api, partner, source, destination, amount)
            stream = ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]})
            first = await anext(stream)
            assert first["paymentStatus"]["status"] == "PENDING"
        rest = await collect(stream, "paymentStatus")
    assert [p["status"] for p in rest] == [status]
    final = rest[0]
    assert final["id"] == payment["id"] and final["failureReason"] == reason
    balances = (final["sourceAccount"]["balance"], final["destinationAccount"]["balance"])
    assert balances == (("90.00", "10.00") if status == "SUCCEEDED" else ("100.00", "0.00"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_late_subscriber_gets_terminal_state_and_completion(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, protocol: str,
) -> None:
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    payment = await pay(api, partner, source, destination)
    async with Subscriptions(api.ws_url, partner.key, protocol) as ws:  # type: ignore[arg-type]
        # The first subscriber waits for the end; the second comes after it.
        first = await collect(ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}), "paymentStatus")
        assert first[-1]["status"] == "SUCCEEDED"
        late = await collect(ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}), "paymentStatus")
    assert [p["status"] for p in late] == ["SUCCEEDED"]
    assert late[0]["sourceAccount"]["balance"] == "90.00"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_account_activity_streams_each_change_once(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, protocol: str,
) -> None:
    partner, other = await make_partner(), await make_partner()
    source = await partner.account(balance="100.00")
    destination = await other.account(balance="0")
    async with Subscriptions(api.ws_url, partner.key, protocol) as ws:  # type: ignore[arg-type]
        stream = ws.results(await ws.start(ACCOUNT_ACTIVITY, {"id": source}))
        # The subscription is live once it delivers something: a first payment's update.
        probe = await pay(api, partner, source, destination, "1.00")
        seen: dict[str, list[str]] = {}
        payments: list[dict[str, Any]] = []

        async def until_all_terminal() -> None:
            async for data in stream:
                update = data["accountActivity"]
                seen.setdefault(update["id"], []).append(update["status"])
                if update["id"] == probe["id"] and not payments:
                    payments.extend([await pay(api, partner, source, destination, "30.00")
                                     for _ in range(4)])
                if payments and all(seen.get(p["id"], ["PENDING"])[-1] != "PENDING"
                                    for p in payments):
                    return

        await asyncio.wait_for(until_all_terminal(), 30)
    seen.pop(probe["id"])
    assert set(seen) == {p["id"] for p in payments}
    for statuses in seen.values():
        # Each change once, in order: PENDING (if it came before the posting) then terminal.
        assert statuses in (["PENDING", "SUCCEEDED"], ["PENDING", "FAILED"], ["SUCCEEDED"], ["FAILED"])
    # 99.00 after the probe: three of 30.00 fit, the fourth does not.
    assert sorted(s[-1] for s in seen.values()) == ["FAILED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_foreign_or_missing_payment_subscription_is_refused_alike(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, protocol: str,
) -> None:
    owner, stranger = await make_partner(), await make_partner()
    source, destination = await owner.account(), await owner.account()
    payment = await pay(api, owner, source, destination)
    refusals = []
    async with Subscriptions(api.ws_url, stranger.key, protocol) as ws:  # type: ignore[arg-type]
        for query, target in ((PAYMENT_STATUS, payment["id"]), (PAYMENT_STATUS, str(uuid.uuid4())),
                              (ACCOUNT_ACTIVITY, source), (ACCOUNT_ACTIVITY, str(uuid.uuid4()))):
            with pytest.raises(GraphQLErrors) as refused:
                await collect(ws.subscribe(query, {"id": target}), "x", timeout=10)
            refusals.append([(e["message"], e["extensions"]["code"]) for e in refused.value.errors])
    assert refusals[0] == refusals[1] == [("no such payment", "NOT_FOUND")]
    assert refusals[2] == refusals[3] == [("no such account", "NOT_FOUND")]


@pytest.fixture
async def second_api(server_env: dict[str, str], api: ApiProcess) -> Any:
    """Another API process beside the session's."""
    process = start_api(server_env)
    try:
        await process.wait_ready()
        yield process
    finally:
        stop_process(process.process)


async def test_payment_created_through_one_process_reaches_subscribers_of_another(
    api: ApiProcess, second_api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any,
) -> None:
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    async with Subscriptions(second_api.ws_url, partner.key) as ws:
        with held(worker):
            payment = await pay(api, partner, source, destination)
            stream = ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]})
            assert (await anext(stream))["paymentStatus"]["status"] == "PENDING"
        assert [p["status"] for p in await collect(stream, "paymentStatus")] == ["SUCCEEDED"]


async def test_subscriber_reconnects_after_its_process_is_killed_and_misses_nothing(
    api: ApiProcess, second_api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any,
) -> None:
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    with held(worker):
        payment = await pay(api, partner, source, destination)
        async with Subscriptions(second_api.ws_url, partner.key) as ws:
            stream = ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]})
            assert (await anext(stream))["paymentStatus"]["status"] == "PENDING"
            second_api.process.kill()
            with pytest.raises(ConnectionError):
                await collect(stream, "paymentStatus", timeout=10)
        # The worker posts while the subscriber is away; reconnecting elsewhere it gets the
        # current state first, so the terminal status is not missed.
    async with Subscriptions(api.ws_url, partner.key) as ws:
        states = await collect(ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}), "paymentStatus")
    assert states[-1]["status"] == "SUCCEEDED"
    assert [s["status"] for s in states] in (["PENDING", "SUCCEEDED"], ["SUCCEEDED"])


async def test_sigterm_closes_subscriptions_with_a_reconnect_code(
    second_api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any,
) -> None:
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    with held(worker):
        payment = await pay(second_api, partner, source, destination)
        async with Subscriptions(second_api.ws_url, partner.key) as ws:
            stream = ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]})
            assert (await anext(stream))["paymentStatus"]["status"] == "PENDING"
            second_api.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionError):
                await collect(stream, "paymentStatus", timeout=15)
            # 1012 "service restart": the client should reconnect (to another process).
            assert ws.close_code == 1012
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert second_api.process.wait(15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in second_api.log()


async def test_cache_shows_terminal_status_from_the_event_before_the_replica_replays(
    settings: Any, server_env: dict[str, str], services: Any, make_partner: Any,
) -> None:
    """A worker that cannot reach Redis: only the API process's status consumer can put the
    SUCCEEDED state in the cache. The replica's replay is paused, so a read that went past
    the cache would show PENDING."""
    from sqlalchemy import text

    from paystream.events.kafka import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    topics = {"PAYSTREAM_KAFKA__REQUESTED_TOPIC": f"requested-{suffix}",
              "PAYSTREAM_KAFKA__STATUS_TOPIC": f"status-{suffix}",
              "PAYSTREAM_KAFKA__DLQ_TOPIC": f"dlq-{suffix}",
              "PAYSTREAM_KAFKA__WORKER_GROUP": f"worker-{suffix}"}
    kafka = settings.kafka.model_copy(update={
        "requested_topic": topics["PAYSTREAM_KAFKA__REQUESTED_TOPIC"],
        "status_topic": topics["PAYSTREAM_KAFKA__STATUS_TOPIC"],
        "dlq_topic": topics["PAYSTREAM_KAFKA__DLQ_TOPIC"]})
    await ensure_topics(kafka)
    api = start_api(server_env, **topics)
    blind_worker = start_worker(server_env, **topics, PAYSTREAM_REDIS__URL="redis://127.0.0.1:9")
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    replica = services.db.replicas[0]
    try:
        await api.wait_ready()
        await wait_for_replay(services.db)  # the accounts, before the pause
        async with replica.connect() as conn:
            await conn.execute(text("SELECT pg_wal_replay_pause()"))
            await conn.commit()
        async with PaystreamClient(api.url, partner.key) as http:
            payment = await http.create_payment(
                idempotency_key="k", source_account_id=source, destination_account_id=destination,
                amount="25.00", currency="USD")
            async with Subscriptions(api.ws_url, partner.key) as ws:
                states = await collect(ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}),
                                       "paymentStatus", timeout=60)
            assert states[-1]["status"] == "SUCCEEDED"
            read = await http.execute(
                "query($id: ID!) { payment(id: $id) { status sourceAccount { balance } "
                "destinationAccount { balance } } }", {"id": payment["id"]})
        async with replica.connect() as conn:
            on_replica = (await conn.execute(
                text("SELECT status FROM payments WHERE id = :id"), {"id": payment["id"]})).scalar()
        assert on_replica in (None, "PENDING")  # the replica is still behind
        assert read["payment"] == {"status": "SUCCEEDED", "sourceAccount": {"balance": "75.00"},
                                   "destinationAccount": {"balance": "125.00"}}
    finally:
        for _ in range(50):  # a resume cancelled by a recovery conflict is asked again
            try:
                async with replica.connect() as conn:
                    await conn.execute(text("SELECT pg_wal_replay_resume()"))
                    await conn.commit()
                    if (await conn.execute(text(
                            "SELECT pg_get_wal_replay_pause_state()"))).scalar() == "not paused":
                        break
            except DBAPIError:
                pass
            await asyncio.sleep(0.1)
        stop_process(blind_worker)
        stop_process(api.process)


async def test_stalled_subscriber_is_dropped_without_delaying_the_others(
    server_env: dict[str, str], worker: subprocess.Popen[bytes], make_partner: Any,
) -> None:
    import json
    import socket
    import statistics
    import time

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    # Small bounds, so that the test overflows them soon.
    api = start_api(server_env, PAYSTREAM_SUBSCRIPTIONS__MAX_QUEUED_EVENTS="100",
                    PAYSTREAM_SUBSCRIPTIONS__STREAM_BATCH_SIZE="20",
                    PAYSTREAM_SUBSCRIPTIONS__MAX_BUFFERED_BYTES="200000")
    partner, other = await make_partner(), await make_partner()
    source = await partner.account(balance="1000.00")
    destination = await other.account(balance="0")
    # payment id -> client -> when its first update arrived (PENDING, or the terminal status
    # when the worker's event overtook the API's PENDING one: the older one is then dropped)
    received: dict[str, dict[str, float]] = {}
    arrived = asyncio.Condition()

    async def follow(name: str, ws: Subscriptions, op_id: str) -> None:
        async for data in ws.results(op_id):
            update = data["accountActivity"]
            async with arrived:
                received.setdefault(update["id"], {}).setdefault(name, time.monotonic())
                arrived.notify_all()

    async def round_of(count: int) -> list[float]:
        """Create payments one by one; each one's delay until both healthy clients have it."""
        delays = []
        for _ in range(count):
            payment = await pay(api, partner, source, destination, "1.00")
            created = time.monotonic()
            payment_id = payment["id"]
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(
                    lambda: len(received.get(payment_id, {})) == 2), 10)  # noqa: B023 (awaited here)
            delays.append(max(received[payment_id].values()) - created)
        return delays

    try:
        await api.wait_ready()
        async with Subscriptions(api.ws_url, partner.key, "graphql-transport-ws") as a, \
                Subscriptions(api.ws_url, partner.key, "graphql-ws") as b:
            followers = [asyncio.create_task(follow(name, ws, await ws.start(
                ACCOUNT_ACTIVITY, {"id": source}))) for name, ws in (("a", a), ("b", b))]
            await round_of(1)  # both subscriptions are live
            baseline = await round_of(10)

            # A client that subscribes 50 times to the same account and then reads nothing:
            # its socket buffers fill, its queues overflow.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", api.port))
            sock.setblocking(False)
            stalled = await connect(api.ws_url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                                    max_queue=1, sock=sock, compression=None)
            await stalled.send(json.dumps({"type": "connection_init", "payload": {
                "authorization": f"Bearer {partner.key}"}}))
            assert json.loads(await stalled.recv())["type"] == "connection_ack"
            query = "subscription($id: ID!) { accountActivity(accountId: $id) { id status reference " \
                    "createdAt updatedAt sourceAccount { id name currency balance } } }"
            for n in range(50):
                await stalled.send(json.dumps({"id": str(n), "type": "subscribe", "payload": {
                    "query": query, "variables": {"id": source}}}))
            # Until the server gives up on it (bounded): the socket buffers absorb a lot first.
            during: list[float] = []
            while "subscriber dropped" not in api.log():
                assert len(during) < 600, "the stalled subscriber was never dropped"
                during += await round_of(5)
            for task in followers:
                task.cancel()

        assert "subscriber dropped: " in api.log()
        # Reading again, the stalled client gets what was buffered, then the end.
        drained = 0
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(30):
                async for _ in stalled:
                    drained += 1
        assert drained < 50 * 2 * len(during)
        # The others were not held up: their delays stayed where they were before the stall.
        usual = statistics.median(baseline)
        assert statistics.median(during) <= max(5 * usual, usual + 0.25), (baseline, during)
    finally:
        stop_process(api.process)


def updates_counted(metrics: str) -> dict[str, float]:
    counted = {"executed": 0.0, "shared": 0.0}
    for line in metrics.splitlines():
        for kind in counted:
            if line.startswith(f'paystream_subscription_updates_total{{execution="{kind}"}}'):
                counted[kind] = float(line.split()[-1])
    return counted


async def test_subscribers_share_an_execution_per_audience_and_see_only_their_own(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any,
) -> None:
    """Three subscribers of the payer and three of the payee watch one payment with the same
    document and variables: its update is executed once per partner and shared with that
    partner's other subscribers, and sharing never shows one partner what only the other may
    see (its balance)."""
    payer, payee = await make_partner(), await make_partner()
    source = await payer.account(balance="100.00")
    destination = await payee.account(balance="0")
    partners = [payer] * 3 + [payee] * 3
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(base_url=api.url) as http:
        sockets = [await stack.enter_async_context(Subscriptions(api.ws_url, p.key))
                   for p in partners]
        with held(worker):
            payment = await pay(api, payer, source, destination, "10.00")
            streams = [ws.subscribe(PAYMENT_STATUS, {"id": payment["id"]}) for ws in sockets]
            # Each subscriber's first state is its own read; the change after it is shared.
            firsts = [await anext(s) for s in streams]
            assert {f["paymentStatus"]["status"] for f in firsts} == {"PENDING"}
            before = updates_counted((await http.get("/metrics")).text)
        rests = await asyncio.gather(*(collect(s, "paymentStatus") for s in streams))
        after = updates_counted((await http.get("/metrics")).text)

    assert [[u["status"] for u in rest] for rest in rests] == [["SUCCEEDED"]] * 6
    assert after["executed"] - before["executed"] == 2  # once per partner
    assert after["shared"] - before["shared"] == 4
    final = [rest[0] for rest in rests]
    assert all(f == final[0] for f in final[:3]) and all(f == final[3] for f in final[3:])
    payer_view, payee_view = final[0], final[3]
    assert (payer_view["sourceAccount"]["balance"], payer_view["destinationAccount"]["balance"]) \
        == ("90.00", None)
    assert (payee_view["sourceAccount"]["balance"], payee_view["destinationAccount"]["balance"]) \
        == (None, "10.00")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_queries_and_mutations_are_refused_over_the_websocket(
    api: ApiProcess, make_partner: Any, protocol: str,
) -> None:
    """The socket carries subscriptions only: a mutation sent over it would skip the HTTP
    gateway's rate limits and admission control, so it is refused and nothing is recorded."""
    partner = await make_partner()
    source, destination = await partner.account(balance="10.00"), await partner.account()
    key = uuid.uuid4().hex
    mutation = ("mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id } }")
    variables = {"input": {"idempotencyKey": key, "sourceAccountId": source,
                           "destinationAccountId": destination, "amount": "1.00",
                           "currency": "USD"}}
    async with Subscriptions(api.ws_url, partner.key, protocol) as ws:  # type: ignore[arg-type]
        for document, args in ((mutation, variables), ("{ __typename }", {})):
            with pytest.raises(GraphQLErrors) as refused:
                await asyncio.wait_for(anext(ws.subscribe(document, args)), 10)
            assert refused.value.codes == ["BAD_USER_INPUT"], document
            assert "over HTTP to /graphql" in refused.value.errors[0]["message"]
    async with PaystreamClient(api.url, partner.key) as http:
        listed = await http.execute("query($a: ID!) { payments(accountId: $a) { edges { node "
                                    "{ id } } } }", {"a": source})
    assert listed["payments"]["edges"] == []


def counted(metrics: str, series: str, label: str, values: tuple[str, ...]) -> dict[str, float]:
    found = dict.fromkeys(values, 0.0)
    for line in metrics.splitlines():
        for value in values:
            if line.startswith(f'{series}{{{label}="{value}"}}'):
                found[value] = float(line.split()[-1])
    return found


# Per protocol: the subscribe message's type, an update's type, an update's keys in order.
ENVELOPES = {"graphql-transport-ws": ("subscribe", "next", ["id", "type", "payload"]),
             "graphql-ws": ("start", "data", ["type", "id", "payload"])}


class RawSocket:
    """A websocket that keeps every text frame as it came, per operation id."""

    def __init__(self, protocol: str, frames: dict[str, list[str]], arrived: asyncio.Condition
                 ) -> None:
        self.protocol, self.frames, self.arrived = protocol, frames, arrived
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self, url: str, key: str, name: str, query: str, variables: dict[str, Any],
                   subscriptions: int) -> list[str]:
        import json

        from websockets.asyncio.client import connect

        self.ws = await connect(url, subprotocols=[self.protocol])  # type: ignore[list-item]  # websockets wants its Subprotocol NewType
        await self.ws.send(json.dumps({"type": "connection_init",
                                       "payload": {"authorization": f"Bearer {key}"}}))
        assert json.loads(await self.ws.recv())["type"] == "connection_ack"
        kind = ENVELOPES[self.protocol][0]
        ids = [f"{name}-{n}" for n in range(subscriptions)]
        for op_id in ids:
            self.frames[op_id] = []
            await self.ws.send(json.dumps({"id": op_id, "type": kind, "payload": {
                "query": query, "variables": variables}}))
        self.reader = asyncio.create_task(self._read())
        return ids

    async def _read(self) -> None:
        import json

        async for raw in self.ws:
            message = json.loads(raw)
            if message.get("type") == "ka":
                continue
            async with self.arrived:
                self.frames.setdefault(message.get("id", ""), []).append(raw)
                self.arrived.notify_all()

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()


async def test_an_update_is_encoded_once_per_audience_and_written_to_every_socket(
    server_env: dict[str, str], worker: subprocess.Popen[bytes], make_partner: Any,
) -> None:
    """Sixteen accountActivity subscribers on one API process, on both protocols, several to a
    socket: twelve of the payer (one document, one account: one audience) and four of the
    payee. Each status event is executed and encoded once per audience, and every subscriber
    still gets exactly one frame per change, byte for byte what Strawberry's handler sends
    (compact JSON, the protocol's envelope in its order, its own id), showing only what its
    partner may see."""
    import json

    api = start_api(server_env)  # its own process: the counters are this test's alone
    payer, payee = await make_partner(), await make_partner()
    source = await payer.account(balance="100.00")
    destination = await payee.account(balance="0")
    frames: dict[str, list[str]] = {}
    arrived = asyncio.Condition()
    sockets: list[RawSocket] = []
    audiences: dict[str, list[str]] = {"payer": [], "payee": []}
    protocol_of: dict[str, str] = {}

    def seen(op_id: str, payment_id: str, status: str) -> list[str]:
        return [raw for raw in frames[op_id]
                if (update := json.loads(raw)["payload"]["data"]["accountActivity"])["id"]
                == payment_id and update["status"] == status]

    async def until_all(payment_id: str, status: str, timeout: float = 15) -> bool:
        ops = [op for ops in audiences.values() for op in ops]
        async with arrived:
            try:
                async with asyncio.timeout(timeout):
                    await arrived.wait_for(lambda: all(seen(op, payment_id, status) for op in ops))
            except TimeoutError:
                return False
        return True

    async def metrics() -> dict[str, float]:
        async with httpx.AsyncClient(base_url=api.url) as http:
            text = (await http.get("/metrics")).text
        return {**counted(text, "paystream_subscription_payloads_total", "encoding",
                          ("encoded", "shared")),
                **{f"execution_{k}": v for k, v in counted(
                    text, "paystream_subscription_updates_total", "execution",
                    ("executed", "shared")).items()}}

    try:
        await api.wait_ready()
        for protocol in PROTOCOLS:
            for who, partner, account, count, per_socket in (
                    ("payer", payer, source, 2, 3), ("payee", payee, destination, 1, 2)):
                for n in range(count):
                    socket = RawSocket(protocol, frames, arrived)
                    sockets.append(socket)
                    ids = await socket.open(api.ws_url, partner.key, f"{who}-{protocol}-{n}",
                                            ACCOUNT_ACTIVITY, {"id": account}, per_socket)
                    audiences[who] += ids
                    protocol_of.update(dict.fromkeys(ids, protocol))
        assert len(audiences["payer"]) == 12 and len(audiences["payee"]) == 4
        # Live once each has had an update (a watch registers when the server has read the
        # subscribe message): a probe payment, again until every subscriber had its end.
        for _ in range(5):
            probe = await pay(api, payer, source, destination, "1.00")
            if await until_all(probe["id"], "SUCCEEDED", timeout=10):
                break
        else:
            pytest.fail("the subscriptions never all went live")

        counts = [await metrics()]
        with held(worker):
            payment = await pay(api, payer, source, destination, "10.00")
            assert await until_all(payment["id"], "PENDING")
            counts.append(await metrics())
        assert await until_all(payment["id"], "SUCCEEDED")
        counts.append(await metrics())
    finally:
        for socket in sockets:
            await socket.close()
        stop_process(api.process)

    for before, after in itertools.pairwise(counts):
        delta = {k: after[k] - before[k] for k in after}
        # One encoding and one execution per audience; the other fourteen reuse them.
        assert delta == {"encoded": 2, "shared": 14, "execution_executed": 2,
                         "execution_shared": 14}, delta
    for status in ("PENDING", "SUCCEEDED"):
        payloads: dict[str, set[str]] = {"payer": set(), "payee": set()}
        for who, ops in audiences.items():
            for op_id in ops:
                [raw] = seen(op_id, payment["id"], status)  # exactly one frame per change
                _, kind, order = ENVELOPES[protocol_of[op_id]]
                message = json.loads(raw)
                assert list(message) == order and message["type"] == kind
                assert message["id"] == op_id
                assert raw == json.dumps(message, separators=(",", ":"))  # as Strawberry encodes
                envelope = json.dumps({k: v for k, v in message.items() if k != "payload"},
                                      separators=(",", ":"))[:-1]
                assert raw.startswith(envelope + ',"payload":') and raw.endswith("}")
                payloads[who].add(raw[len(envelope) + len(',"payload":'):-1])
        # The same bytes for a whole audience, on both protocols, and each its own view.
        assert len(payloads["payer"]) == len(payloads["payee"]) == 1
        payer_view = json.loads(payloads["payer"].pop())["data"]["accountActivity"]
        payee_view = json.loads(payloads["payee"].pop())["data"]["accountActivity"]
        assert payer_view["destinationAccount"]["balance"] is None
        assert payee_view["sourceAccount"]["balance"] is None
        assert payer_view["sourceAccount"]["balance"] is not None
        assert payee_view["destinationAccount"]["balance"] is not None
    # The terminal update shows the balances after the posting (probes of 1.00 before it).
    paid = Decimal("100.00") - Decimal(payer_view["sourceAccount"]["balance"])
    assert paid == Decimal(payee_view["destinationAccount"]["balance"]) >= Decimal("11.00")
    for op_id in (op for ops in audiences.values() for op in ops):
        assert all(json.loads(raw)["type"] in ("next", "data") for raw in frames[op_id])
