"""createPayment to SUCCEEDED as a subscriber sees it, at a steady rate (open loop), with the
broker's own produce-to-consume latency measured alongside as the baseline.

    python -m bench.loadgen.latency --url URL --key KEY --sources A,B --destinations C,D \
        --bootstrap HOST:PORT [--rate 200] [--payments 1000] [--fetch-max-wait-ms 10]

One websocket per source account carries an ``accountActivity`` subscription (the typed
client, as a frontend would use it). Payments are sent at fixed times whatever the previous
ones are doing; each latency runs from just before its request is written to the moment its
SUCCEEDED update is read off the socket. The payment's ``reference`` ties the two together.
Meanwhile a producer (acks=all) and a group-less consumer with the same ``fetch_max_wait_ms``
time one broker hop on a scratch topic. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import uvloop
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from paystream.client import ACCOUNT_ACTIVITY, CREATE_PAYMENT, PaystreamClient, Subscriptions
from paystream.config import KafkaSettings
from paystream.events.kafka import make_consumer, make_producer

PROBE_TOPIC = "bench.latency-probe"


def log(message: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Watcher:
    """Every SUCCEEDED update of this run's payments, with the time it was read."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.succeeded: dict[str, float] = {}
        self.arrived = asyncio.Event()

    async def follow(self, ws: Subscriptions, account: str) -> None:
        async for data in ws.subscribe(ACCOUNT_ACTIVITY, {"id": account}):
            now = time.monotonic()
            payment = data["accountActivity"]
            reference = payment.get("reference") or ""
            if payment["status"] == "SUCCEEDED" and reference.startswith(self.prefix):
                self.succeeded.setdefault(reference, now)
                self.arrived.set()

    async def wait_for(self, references: set[str], timeout: float) -> set[str]:
        """The references still unseen after ``timeout`` seconds at most."""
        deadline = time.monotonic() + timeout
        while missing := references - self.succeeded.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return missing
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass
        return set()


async def create_topic(kafka: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers,
                                request_timeout_ms=10_000)
    await admin.start()
    try:
        if PROBE_TOPIC not in await admin.list_topics():
            await admin.create_topics([NewTopic(PROBE_TOPIC, 1, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def probe(kafka: KafkaSettings, rate: float, stop: asyncio.Event) -> list[float]:
    """One broker hop: produce (acks=all) to a scratch topic, read it back with a consumer
    configured like the status stream's. Milliseconds per message."""
    producer = make_producer(kafka)
    consumer = make_consumer(kafka, group_id=None)
    await create_topic(kafka)
    await producer.start()
    tp = TopicPartition(PROBE_TOPIC, 0)
    await consumer.start()
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    run = uuid.uuid4().hex[:8]
    sent: dict[str, float] = {}
    latencies: list[float] = []

    async def read() -> None:
        while True:
            batches = await consumer.getmany(tp, timeout_ms=1000)
            now = time.monotonic()
            for record in batches.get(tp, ()):
                started = sent.pop(record.value.decode(), None)
                if started is not None:
                    latencies.append((now - started) * 1000)

    reader = asyncio.create_task(read())
    try:
        i = 0
        while not stop.is_set():
            value = f"{run}-{i}"
            sent[value] = time.monotonic()
            await producer.send_and_wait(PROBE_TOPIC, value.encode(), partition=0)
            i += 1
            await asyncio.sleep(1 / rate)
        deadline = time.monotonic() + 2
        while sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
    return latencies


async def main(args: argparse.Namespace) -> dict[str, Any]:
    sources, destinations = args.sources.split(","), args.destinations.split(",")
    prefix = f"lat-{uuid.uuid4().hex[:8]}"
    watcher = Watcher(prefix)
    ws_url = "ws" + args.url.removeprefix("http") + "/graphql"
    async with PaystreamClient(args.url, args.key) as api:
        connections = [Subscriptions(ws_url, args.key) for _ in sources]
        for ws in connections:
            await ws.__aenter__()
        followers = [asyncio.create_task(watcher.follow(ws, account))
                     for ws, account in zip(connections, sources, strict=True)]
        try:
            # A subscription is live once it has seen a payment; warm-ups until each has.
            for attempt in range(10):
                warm = {f"{prefix}-warm{attempt}-{j}": (s, d) for j, (s, d)
                        in enumerate(zip(sources, destinations, strict=False))}
                for reference, (source, destination) in warm.items():
                    await api.create_payment(
                        idempotency_key=reference, source_account_id=source,
                        destination_account_id=destination, amount="0.01", currency="USD",
                        reference=reference)
                if not await watcher.wait_for(set(warm), 10.0):
                    break
            else:
                raise RuntimeError("subscriptions never saw their warm-up payments")
            log(f"{len(sources)} subscriptions live; {args.payments} payments at {args.rate}/s")
            result = await load(args, watcher, prefix, sources, destinations)
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            for ws in connections:
                await ws.__aexit__(None, None, None)
    result["subscriptions"] = len(sources)
    result["connections"] = len(connections)
    return result


class Sender:
    """createPayment over a fixed pool of keep-alive HTTP/1.1 connections, with no client
    library in the way: httpx costs the generator more CPU per request than the API's own
    parsing, and on two shared cores that skews the figure. Requests wait for a free
    connection in order; their time runs from their scheduled moment, so waiting for a
    connection the server has not freed counts against the server (no coordinated omission)."""

    def __init__(self, url: str, key: str, connections: int) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.head = (f"POST /graphql HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
                     f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n")
        self.connections = connections
        self.queue: asyncio.Queue[tuple[bytes, str, float] | None] = asyncio.Queue()
        self.done: dict[str, tuple[float, str | None]] = {}  # reference: (when, error)

    def submit(self, body: bytes, reference: str, due: float) -> None:
        self.queue.put_nowait((body, reference, due))

    async def run(self) -> None:
        await asyncio.gather(*(self._connection() for _ in range(self.connections)))

    async def stop(self) -> None:
        for _ in range(self.connections):
            self.queue.put_nowait(None)

    async def _connection(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            while (item := await self.queue.get()) is not None:
                body, reference, _ = item
                writer.write(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                error = None
                if not status.startswith(b"HTTP/1.1 200") or b'"errors"' in answer:
                    error = (status.decode().strip() + " " + answer[:200].decode())
                self.done[reference] = (time.monotonic(), error)
        finally:
            writer.close()


async def load(args: argparse.Namespace, watcher: Watcher, prefix: str,
               sources: list[str], destinations: list[str]) -> dict[str, Any]:
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap,
                          fetch_max_wait_ms=args.fetch_max_wait_ms)
    stop_probe = asyncio.Event()
    prober = asyncio.create_task(probe(kafka, args.probe_rate, stop_probe))
    await asyncio.sleep(1.0)  # the probe's consumer positioned before the load starts
    sender = Sender(args.url, args.key, args.connections)
    sending = asyncio.create_task(sender.run())
    log(f"probe running; sending over {args.connections} connections")
    due_at: dict[str, float] = {}
    lateness: list[float] = []
    begin = time.monotonic()
    for i in range(args.payments):
        due = begin + i / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append((time.monotonic() - due) * 1000)
        reference = f"{prefix}-{i}"
        due_at[reference] = due
        sender.submit(json.dumps({"query": CREATE_PAYMENT, "variables": {"input": {
            "idempotencyKey": reference, "sourceAccountId": sources[i % len(sources)],
            "destinationAccountId": destinations[i % len(destinations)], "amount": "0.01",
            "currency": "USD", "reference": reference}}}).encode(), reference, due)
    scheduled = time.monotonic() - begin
    log(f"schedule done in {scheduled:.1f} s; waiting up to {args.settle:.0f} s for the rest")
    deadline = time.monotonic() + args.settle
    while len(sender.done) < args.payments and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    answered = set(sender.done)
    missing = await watcher.wait_for(answered, max(0.0, deadline - time.monotonic()))
    await sender.stop()
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    stop_probe.set()
    try:
        probe_ms = await prober
    except Exception as exc:  # noqa: BLE001 -- the figure stands without its baseline
        log(f"broker probe failed: {type(exc).__name__}: {exc}")
        probe_ms = []
    errors = [e for _, e in sender.done.values() if e]
    order = sorted(due_at, key=due_at.__getitem__)
    return {
        "payments": args.payments, "rate": args.rate, "schedule_s": scheduled,
        "answered": len(answered), "unanswered": args.payments - len(answered),
        "latencies_ms": [(watcher.succeeded[r] - due_at[r]) * 1000 for r in order
                         if r in watcher.succeeded],
        "roundtrip_ms": [(sender.done[r][0] - due_at[r]) * 1000 for r in order
                         if r in sender.done and not sender.done[r][1]],
        # The status path alone: the worker, the broker twice, the fan-out.
        "after_answer_ms": [(watcher.succeeded[r] - sender.done[r][0]) * 1000 for r in order
                            if r in watcher.succeeded and r in sender.done],
        "probe_ms": probe_ms, "probe_rate": args.probe_rate,
        "fetch_max_wait_ms": args.fetch_max_wait_ms, "http_connections": args.connections,
        "send_lateness_ms": lateness, "errors": len(errors), "error_samples": errors[:5],
        "missing": len(missing),
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen.latency")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--sources", required=True, help="comma-separated account ids")
    parser.add_argument("--destinations", required=True, help="comma-separated account ids")
    parser.add_argument("--bootstrap", required=True, help="the broker, for the probe")
    parser.add_argument("--fetch-max-wait-ms", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0, help="payments a second")
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--probe-rate", type=float, default=50.0, help="probe messages a second")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds to wait for the last answers and updates after sending")
    parser.add_argument("--connections", type=int, default=64,
                        help="HTTP connections for the mutations")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(parse()))), flush=True)
