"""createPayments (bulk) at a fixed number of requests in flight, closed loop: each
connection sends its next batch when the previous one is answered.

    python -m bench.loadgen.bulk --url URL --key KEY --sources A,B --destination C \
        [--batch 1000] [--connections 4] [--seconds 20]

Every input has a fresh idempotency key; sources rotate over the given accounts. The request
bodies are built before the clock starts, so the generator's own JSON work is not timed.
Prints one JSON line: requests, payments answered with a payment, inputs answered with an
error, request latencies (ms) and the seconds measured.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import uuid
from typing import Any

import httpx
import uvloop

from ..loadgen import percentile

MUTATION = ("mutation($inputs: [CreatePaymentInput!]!) { createPayments(inputs: $inputs) {"
            " payment { id } error { code } } }")


def log(message: str) -> None:
    print(f"[bulk {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bodies(sources: list[str], destination: str, batch: int, count: int) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    rotation = itertools.cycle(sources)
    serial = itertools.count()
    return [json.dumps({"query": MUTATION, "variables": {"inputs": [
        {"idempotencyKey": f"bulk-{run}-{next(serial)}", "sourceAccountId": next(rotation),
         "destinationAccountId": destination, "amount": "0.01", "currency": "USD"}
        for _ in range(batch)]}}).encode() for _ in range(count)]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    sources = args.sources.split(",")
    # Enough bodies for a generous rate; a run that uses them all stops early, and says so.
    prepared = bodies(sources, args.destination, args.batch, args.max_requests)
    queue = iter(prepared)
    latencies: list[float] = []
    accepted = refused = failed = 0
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=args.connections)
    async with httpx.AsyncClient(base_url=args.url, timeout=120.0, limits=limits,
                                 headers=headers) as http:
        deadline = time.monotonic() + args.seconds

        async def connection() -> None:
            nonlocal accepted, refused, failed
            while time.monotonic() < deadline:
                body = next(queue, None)
                if body is None:
                    return
                started = time.perf_counter()
                response = await http.post("/graphql", content=body)
                latencies.append((time.perf_counter() - started) * 1000)
                answer = response.json()
                if response.status_code != 200 or answer.get("errors"):
                    failed += 1
                    if failed <= 3:
                        log(f"refused: {response.status_code} {str(answer)[:300]}")
                    continue
                for result in answer["data"]["createPayments"]:
                    if result["payment"] is not None:
                        accepted += 1
                    else:
                        refused += 1

        started = time.monotonic()
        await asyncio.gather(*(connection() for _ in range(args.connections)))
        elapsed = time.monotonic() - started
    return {"requests": len(latencies), "accepted": accepted, "refused_inputs": refused,
            "failed_requests": failed, "seconds": elapsed, "batch": args.batch,
            "connections": args.connections, "ran_out": next(queue, None) is None,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen.bulk")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--sources", required=True, help="comma-separated account ids")
    parser.add_argument("--destination", required=True, help="an account id")
    parser.add_argument("--batch", type=int, default=1000, help="inputs per request")
    parser.add_argument("--connections", type=int, default=4, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=250,
                        help="bodies prepared in advance (the most the run can send)")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(parse()))), flush=True)
