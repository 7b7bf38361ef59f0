"""Scenario 9: webhooks delivered to a local receiver (uvicorn on loopback, ``bench.apps.receiver``)
by one sender process (``paystream webhooks``, default settings: 64 attempts in flight, 8 per
endpoint), against the same receiver hit directly in the same run by wrk and by an httpx
load generator with as many requests in flight (``bench.loadgen.posts``, the sender's own
HTTP client, one connection pool per endpoint as the sender keeps them; one pool of 64 is
measured too), POSTing a real webhook's bytes and headers.

Eight partners, one endpoint each (``payment.succeeded`` only), payments between each
partner's own two accounts, so each payment is one delivery.

1. Throughput: N payments are accepted and settled while no sender runs (a backlog in
   ``payments.status``); then the sender starts and the figure is deliveries a second at the
   receiver, from the first receipt to the N-th.
2. Latency: with the sender running, payments at a fixed rate; event-to-delivery is the
   receipt time at the receiver minus the event's time (the webhook's ``createdAt``, the
   payment's SUCCEEDED time as the worker committed it), so it covers the outbox, the broker
   hop, the sender's consumer and schedule, the claim and the POST.

With ``BENCH_PROFILE_SENDER=1`` (and py-spy installed) the sender is sampled by py-spy during
phase 1 (from its start to the N-th receipt) and the hottest frames go to
``bench/results/webhooks-profile.txt``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import text

from paystream.devstack import free_port
from paystream.services.admin import new_account, new_partner
from paystream.services.payments import CreatePayment
from paystream.services.webhooks import WebhookService
from paystream.webhooks.secrets import new_encryption_key

from ..common import RESULTS
from ..harness import (
    LOGS,
    BenchContext,
    Row,
    Scenario,
    Server,
    profile,
    progress,
    spawn,
    summarize_profile,
    wrk,
)
from ..loadgen import percentile
from ..loadgen import run as run_loadgen

NAME = "9 webhooks"
ENDPOINTS = 8
CONNECTIONS = 64  # the sender's max_in_flight (8 endpoints x 8 per endpoint)


class Party:
    """One partner of the bench with its two accounts (payments go from one to the other)."""

    def __init__(self, caller: Any, source: str, destination: str) -> None:
        self.caller, self.source, self.destination = caller, source, destination


async def parties(ctx: BenchContext, service: WebhookService, receiver: Server) -> list[Party]:
    run = uuid.uuid4().hex[:6]
    made = []
    for i in range(ENDPOINTS):
        name = f"hooks-{run}-{i}"
        key = await new_partner(ctx.services.db, name)
        source, destination = [str(await new_account(
            ctx.services.db, partner=name, name=f"a{n}", currency="USD",
            balance="100000000.00")) for n in range(2)]
        await service.create_for(await service.partner_named(name), f"{receiver.url}/hook-{i}",
                                 ["payment.succeeded"])
        made.append(Party(await ctx.services.auth.caller_for(f"Bearer {key}"), source,
                          destination))
    return made


async def accept_backlog(ctx: BenchContext, parties: list[Party], count: int) -> None:
    """``count`` payments accepted with createPayments, 500 per call, across the parties."""
    prefix = uuid.uuid4().hex[:8]
    per_party = count // len(parties)
    for index, party in enumerate(parties):
        for start in range(0, per_party, 500):
            answers = await ctx.services.payments.create_many(party.caller, [
                CreatePayment(idempotency_key=f"{prefix}-{index}-{n}",
                              source_account_id=party.source,
                              destination_account_id=party.destination, amount="0.01",
                              currency="USD")
                for n in range(start, min(start + 500, per_party))])
            refused = [a for a in answers if isinstance(a, Exception)]
            if refused:
                raise RuntimeError(f"backlog refused: {refused[0]!r}")


async def paced(ctx: BenchContext, parties: list[Party], count: int, rate: float) -> None:
    """``count`` createPayment calls at ``rate`` a second, open loop (each on its own task, so
    a slow one does not delay the schedule)."""
    prefix = uuid.uuid4().hex[:8]
    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for n in range(count):
            party = parties[n % len(parties)]
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            group.create_task(ctx.services.payments.create(party.caller, CreatePayment(
                idempotency_key=f"{prefix}-{n}", source_account_id=party.source,
                destination_account_id=party.destination, amount="0.01", currency="USD")))


async def receiver_stats(receiver: Server, prefix: str, *, detail: bool = False
                         ) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=receiver.url, timeout=60.0) as http:
        params = {"prefix": prefix, **({"detail": "1"} if detail else {})}
        return dict((await http.get("/stats", params=params)).json())


async def wait_received(receiver: Server, prefix: str, count: int, timeout: float) -> None:
    """Until the receiver has ``count`` requests on ``prefix``: another process's state,
    polled (it offers nothing to await)."""
    deadline = time.monotonic() + timeout
    while (seen := (await receiver_stats(receiver, prefix))["count"]) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the receiver got {seen} of {count} webhooks in {timeout:.0f} s")
        await asyncio.sleep(0.25)


def start_sender(ctx: BenchContext, key: str, metrics_port: int) -> subprocess.Popen[bytes]:
    process, _ = spawn("webhooks", [sys.executable, "-m", "paystream.cli", "webhooks"], {
        **ctx.env, "PAYSTREAM_WEBHOOKS__ENCRYPTION_KEY": key,
        "PAYSTREAM_WEBHOOKS__GROUP": f"bench-webhooks-{uuid.uuid4().hex[:8]}",
        "PAYSTREAM_METRICS__WEBHOOKS_PORT": str(metrics_port),
        "PAYSTREAM_METRICS__SAMPLE_INTERVAL_S": "5"})
    return process


def request_lua(path: Path, sample: dict[str, Any]) -> Path:
    lines = ['wrk.method = "POST"']
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}"
              for name, value in sample["headers"].items()]
    lines.append(f"wrk.body = {json.dumps(sample['body'])}")
    path.write_text("\n".join(lines) + "\n")
    return path


_HOPS = text(
    "SELECT e.event_id::text, extract(epoch FROM e.scheduled_at),"
    "       extract(epoch FROM min(d.at)) FROM webhook_events e"
    " JOIN webhook_deliveries d ON d.webhook_event_id = e.id"
    " WHERE e.event_id = ANY(CAST(:ids AS uuid[])) GROUP BY e.event_id, e.scheduled_at")


async def hops(ctx: BenchContext, live: dict[str, Any]) -> dict[str, float]:
    """Where the event-to-delivery time goes, p50 of each hop in ms: the event's time to its
    row in the schedule (outbox, broker, the sender's consumer; the row's ``scheduled_at`` is
    its scheduling transaction's start), the schedule to the receipt (claim and POST), and the
    receipt to the attempt's record (the batched settle)."""
    received = {event: at for event, (at, _) in zip(live["ids"], live["received"], strict=True)}
    created = {event: t for event, (_, t) in zip(live["ids"], live["received"], strict=True)}
    async with ctx.services.db.primary.connect() as conn:
        rows = (await conn.execute(_HOPS, {"ids": list(received)})).all()
    parts: dict[str, list[float]] = {"to_schedule": [], "schedule_to_receipt": [],
                                     "receipt_to_record": []}
    for event, scheduled, recorded in rows:
        if created.get(event) is None:
            continue
        parts["to_schedule"].append((float(scheduled) - created[event]) * 1000)
        parts["schedule_to_receipt"].append((received[event] - float(scheduled)) * 1000)
        parts["receipt_to_record"].append((float(recorded) - received[event]) * 1000)
    return {f"{name}_p50_ms": percentile(values, 50) for name, values in parts.items()} | {
        f"{name}_p99_ms": percentile(values, 99) for name, values in parts.items()}


async def scrape(port: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        body = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    series: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("paystream_webhook") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


async def run(ctx: BenchContext) -> Scenario:
    count = 2_000 if ctx.quick else 10_000
    rate = 20.0 if ctx.quick else 50.0
    paced_count = int(rate * ctx.seconds)
    key = new_encryption_key()
    settings = ctx.settings.model_copy(update={"webhooks": ctx.settings.webhooks.model_copy(
        update={"encryption_key": SecretStr(key)})})
    service = WebhookService(settings, ctx.services.db)
    receiver = await ctx.start_app("receiver")
    metrics_port = free_port()
    sender: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    data: dict[str, Any] = {"payments": count, "endpoints": ENDPOINTS, "rate": rate,
                            "paced": paced_count}
    try:
        people = await parties(ctx, service, receiver)
        progress(f"  {count} payments settled with no sender running")
        await accept_backlog(ctx, people, count)
        await ctx.wait_drained(timeout=max(300.0, count / 20))

        progress(f"  sender started: delivering the backlog of {count}")
        started = time.time()
        sender = start_sender(ctx, key, metrics_port)
        spy = profile("BENCH_PROFILE_SENDER", sender.pid, max(300.0, count / 10),
                      LOGS / "sender.folded")
        await wait_received(receiver, "/hook-", count, timeout=max(300.0, count / 10))
        backlog = await receiver_stats(receiver, "/hook-", detail=True)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
            spy.wait(60)
            folded = LOGS / "sender.folded"
            if folded.exists():
                (RESULTS / "webhooks-profile.txt").write_text(
                    summarize_profile(folded, "the sender (py-spy, 100 Hz, phase 1)"))
                data["profile"] = "bench/results/webhooks-profile.txt"
        received = backlog["received"]
        ids = backlog["ids"]
        seconds = received[count - 1][0] - received[0][0]
        throughput = (count - 1) / seconds if seconds > 0 else 0.0
        data.update(backlog_seconds=seconds, backlog_per_second=throughput,
                    first_receipt_after_start_s=received[0][0] - started,
                    duplicates=len(ids) - len(set(ids)))
        sample = backlog["sample"]

        progress(f"  {paced_count} payments at {rate:.0f}/s with the sender running")
        async with httpx.AsyncClient(base_url=receiver.url) as http:
            await http.post("/reset")
        await paced(ctx, people, paced_count, rate)
        await wait_received(receiver, "/hook-", paced_count, timeout=120.0)
        live = await receiver_stats(receiver, "/hook-", detail=True)
        latencies = [(at - event) * 1000 for at, event in live["received"] if event is not None]
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        data.update(latencies_ms=sorted(latencies), latency_p50_ms=p50, latency_p99_ms=p99,
                    hops=await hops(ctx, live))
        data["sender_metrics"] = await scrape(metrics_port)
        # The baselines with the sender stopped, so it takes no CPU from them.
        Server("webhooks", sender, metrics_port, LOGS / "webhooks.log").stop()

        request_file = LOGS / "webhook-request.json"
        request_file.write_text(json.dumps(sample))
        progress(f"  baseline: wrk, {CONNECTIONS} connections, {ctx.seconds:.0f} s")
        direct = wrk(f"{receiver.url}/load-wrk", request_lua(LOGS / "webhook.lua", sample),
                     connections=CONNECTIONS, seconds=ctx.seconds)
        progress(f"  baseline: httpx, {CONNECTIONS} in flight in {ENDPOINTS} pools, "
                 f"{ctx.seconds:.0f} s")
        client = await run_loadgen(
            "posts", "posts", "--url", f"{receiver.url}/load-httpx", "--request", request_file,
            "--connections", CONNECTIONS, "--pools", ENDPOINTS, "--seconds", ctx.seconds,
            env=ctx.env, timeout=ctx.seconds + 120)
        # The sender's client before it kept a pool per endpoint: one pool for all 64.
        progress(f"  httpx, {CONNECTIONS} in flight in one pool, {ctx.seconds:.0f} s")
        one_pool = await run_loadgen(
            "posts-one-pool", "posts", "--url", f"{receiver.url}/load-httpx-1",
            "--request", request_file, "--connections", CONNECTIONS, "--pools", 1,
            "--seconds", ctx.seconds, env=ctx.env, timeout=ctx.seconds + 120)
    finally:
        for process in (spy, sender):
            if process is not None and process.poll() is None:
                Server("webhooks", process, metrics_port, LOGS / "webhooks.log").stop()
        receiver.stop()
    data.update(wrk=direct.as_dict(), httpx=client, httpx_one_pool=one_pool)
    return Scenario("webhooks", [
        Row(NAME, "delivered/s (backlog)", throughput, "events/s", direct.requests_per_s,
            f"wrk POSTs/s, {CONNECTIONS} connections"),
        Row(NAME, "delivered/s vs httpx", throughput, "events/s", client["per_second"],
            f"httpx POSTs/s, {CONNECTIONS} in flight, {ENDPOINTS} pools"),
        Row(NAME, "event-to-delivery p50", p50, "ms"),
        Row(NAME, "event-to-delivery p99", p99, "ms"),
    ], data, [
        (f"one sender process (64 in flight, 8 per endpoint), {ENDPOINTS} endpoints on one "
         f"uvicorn receiver; throughput over a backlog of {count:,} settled payments, first to "
         f"last receipt; latency over {paced_count:,} payments at {rate:.0f}/s, receipt minus "
         "the webhook's createdAt; baselines: the same receiver hit directly by wrk (1 thread) "
         f"and by bench.loadgen.posts (httpx, 1 process, {ENDPOINTS} pools as the sender keeps) "
         "with the same bytes and headers")])
