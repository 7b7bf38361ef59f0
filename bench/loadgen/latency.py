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

import uvloop
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from paystream.client import ACCOUNT_ACTIVITY, PaystreamClient, Subscriptions
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
            result = await load(args, api, watcher, prefix, sources, destinations)
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            for ws in connections:
                await ws.__aexit__(None, None, None)
    result["subscriptions"] = len(sources)
    result["connections"] = len(connections)
    return result


async def load(args: argparse.Namespace, api: PaystreamClient, watcher: Watcher, prefix: str,
               sources: list[str], destinations: list[str]) -> dict[str, Any]:
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap,
                          fetch_max_wait_ms=args.fetch_max_wait_ms)
    stop_probe = asyncio.Event()
    prober = asyncio.create_task(probe(kafka, args.probe_rate, stop_probe))
    await asyncio.sleep(1.0)  # the probe's consumer positioned before the load starts
    log("probe running; sending")
    sent_at: dict[str, float] = {}
    roundtrips: dict[str, float] = {}
    lateness: list[float] = []
    errors: list[str] = []

    async def send(i: int) -> None:
        reference = f"{prefix}-{i}"
        started = sent_at[reference] = time.monotonic()
        try:
            await api.create_payment(
                idempotency_key=reference, source_account_id=sources[i % len(sources)],
                destination_account_id=destinations[i % len(destinations)], amount="0.01",
                currency="USD", reference=reference)
            roundtrips[reference] = (time.monotonic() - started) * 1000
        except Exception as exc:  # noqa: BLE001 -- counted; an open-loop load goes on
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    tasks = []
    begin = time.monotonic()
    for i in range(args.payments):
        due = begin + i / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append((time.monotonic() - due) * 1000)
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    sending = time.monotonic() - begin
    log(f"sent in {sending:.1f} s; {len(errors)} errors")
    missing = await watcher.wait_for(set(roundtrips), args.settle)
    stop_probe.set()
    try:
        probe_ms = await prober
    except Exception as exc:  # noqa: BLE001 -- the figure stands without its baseline
        log(f"broker probe failed: {type(exc).__name__}: {exc}")
        probe_ms = []
    latencies = [(watcher.succeeded[r] - sent_at[r]) * 1000
                 for r in sorted(sent_at, key=lambda r: sent_at[r]) if r in watcher.succeeded]
    return {
        "payments": args.payments, "rate": args.rate, "sending_s": sending,
        "achieved_rate": args.payments / sending if sending else 0.0,
        "latencies_ms": latencies,
        "roundtrip_ms": [roundtrips[r] for r in sorted(roundtrips, key=lambda r: sent_at[r])],
        "probe_ms": probe_ms, "probe_rate": args.probe_rate,
        "fetch_max_wait_ms": args.fetch_max_wait_ms,
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
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds to wait for the last updates after sending")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(parse()))), flush=True)
