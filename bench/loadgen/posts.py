"""POSTs of one body to one URL at a fixed number of requests in flight, closed loop, with
httpx (the webhook sender's HTTP client): the webhook bench's client-side baseline.

    python -m bench.loadgen.posts --url URL --request FILE [--connections 64] [--pools 1]
        [--seconds 20]

The connections are split over ``--pools`` clients (the sender keeps one pool per endpoint:
httpcore's pool slows down with the connections it holds). FILE is JSON
``{"body": "...", "headers": {...}}`` (a real webhook, as the receiver kept it).
Prints one JSON line: requests answered 2xx, errors, seconds, requests/s and latency p50/p99
in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop

from ..loadgen import percentile


async def main(args: argparse.Namespace) -> dict[str, Any]:
    request = json.loads(Path(args.request).read_text())
    body = request["body"].encode()
    headers = dict(request["headers"])
    latencies: list[float] = []
    errors = 0
    per_pool = max(1, args.connections // args.pools)
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
    clients = [httpx.AsyncClient(timeout=10.0, limits=limits) for _ in range(args.pools)]
    try:
        deadline = time.monotonic() + args.seconds

        async def connection(http: httpx.AsyncClient) -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    response = await http.post(args.url, content=body, headers=headers)
                    ok = 200 <= response.status_code < 300
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.monotonic() - started) * 1000)
                else:
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(connection(http) for http in clients for _ in range(per_pool)))
        seconds = time.monotonic() - started
    finally:
        for http in clients:
            await http.aclose()
    return {"requests": len(latencies), "errors": errors, "seconds": seconds,
            "connections": per_pool * args.pools, "pools": args.pools,
            "per_second": len(latencies) / seconds if seconds else 0.0,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen.posts")
    parser.add_argument("--url", required=True)
    parser.add_argument("--request", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--pools", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    result = uvloop.run(main(parser.parse_args()))
    print(json.dumps(result), flush=True)
    sys.exit(0)
