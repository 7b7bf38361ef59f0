"""Many open subscriptions from one process, for the capacity scenario.

    python -m bench.loadgen.subscribers --url URL --key KEY --account ID \
        --subscriptions 5000 [--per-connection 10]

Opens ``--subscriptions`` ``accountActivity`` subscriptions to one account over websockets
(graphql-transport-ws), ``--per-connection`` to a socket, then prints
``{"opened": n, "connections": c, "open_s": t}`` and takes commands on stdin, one JSON object
a line, answering each with one JSON line:

- ``{"cmd": "wait", "reference": R, "timeout": T}``: wait until every subscription has seen
  the SUCCEEDED update of the payment whose reference is R (or T seconds); answers how many
  did and when (``time.monotonic()``, which is one clock for every process on Linux) the first
  and last of them read it, for PENDING and SUCCEEDED.
- ``{"cmd": "live"}``: how many subscriptions have received anything yet.

The client reads raw frames and parses each once; it does as little as it can per message,
so that on a small machine the server, not this process, sets the pace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from paystream.client import ACCOUNT_ACTIVITY


class Receipts:
    """Per payment reference and status: how many subscriptions read it, first and last."""

    def __init__(self) -> None:
        self.count: dict[tuple[str, str], int] = defaultdict(int)
        self.first: dict[tuple[str, str], float] = {}
        self.last: dict[tuple[str, str], float] = {}
        self.live: set[tuple[int, str]] = set()
        self.changed = asyncio.Event()

    def record(self, connection: int, op_id: str, reference: str, status: str) -> None:
        now = time.monotonic()
        key = (reference, status)
        self.count[key] += 1
        self.first.setdefault(key, now)
        self.last[key] = now
        self.live.add((connection, op_id))
        self.changed.set()

    def report(self, reference: str) -> dict[str, Any]:
        return {status.lower(): {"received": self.count.get((reference, status), 0),
                                 "first": self.first.get((reference, status)),
                                 "last": self.last.get((reference, status))}
                for status in ("PENDING", "SUCCEEDED")}


async def open_connection(url: str, key: str, account: str, subscriptions: int
                          ) -> ClientConnection:
    ws = await connect(url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                       open_timeout=60, max_queue=None)
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"authorization": f"Bearer {key}"}}))
    message = json.loads(await ws.recv())
    if message["type"] != "connection_ack":
        raise RuntimeError(f"connection refused: {message}")
    payload = {"query": ACCOUNT_ACTIVITY, "variables": {"id": account}}
    for op_id in range(1, subscriptions + 1):
        await ws.send(json.dumps({"id": str(op_id), "type": "subscribe", "payload": payload}))
    return ws


async def read(index: int, ws: ClientConnection, receipts: Receipts) -> None:
    async for raw in ws:
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "next":
            payment = message["payload"]["data"]["accountActivity"]
            receipts.record(index, message["id"], payment.get("reference") or "",
                            payment["status"])
        elif kind == "ping":
            await ws.send('{"type": "pong"}')
        elif kind in ("error", "complete"):
            print(f"[subscribers] {kind} on connection {index}: {message}", file=sys.stderr)


async def commands(receipts: Receipts, total: int) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        command = json.loads(line)
        if command["cmd"] == "live":
            answer: dict[str, Any] = {"live": len(receipts.live)}
        elif command["cmd"] == "wait":
            reference, deadline = command["reference"], time.monotonic() + command["timeout"]
            while (receipts.count.get((reference, "SUCCEEDED"), 0) < total
                   and time.monotonic() < deadline):
                receipts.changed.clear()
                try:
                    await asyncio.wait_for(receipts.changed.wait(), 0.2)
                except TimeoutError:
                    pass
            answer = receipts.report(reference)
        else:
            break
        print(json.dumps(answer), flush=True)


async def main(args: argparse.Namespace) -> None:
    url = "ws" + args.url.removeprefix("http") + "/graphql"
    sizes = [args.per_connection] * (args.subscriptions // args.per_connection)
    if args.subscriptions % args.per_connection:
        sizes.append(args.subscriptions % args.per_connection)
    receipts = Receipts()
    gate = asyncio.Semaphore(args.open_concurrency)

    async def opened(size: int) -> ClientConnection:
        async with gate:
            return await open_connection(url, args.key, args.account, size)

    started = time.monotonic()
    sockets = await asyncio.gather(*(opened(size) for size in sizes))
    open_s = time.monotonic() - started
    readers = [asyncio.create_task(read(i, ws, receipts)) for i, ws in enumerate(sockets)]
    print(json.dumps({"opened": args.subscriptions, "connections": len(sockets),
                      "open_s": open_s}), flush=True)
    try:
        await commands(receipts, args.subscriptions)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen.subscribers")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--subscriptions", type=int, required=True)
    parser.add_argument("--per-connection", type=int, default=10)
    parser.add_argument("--open-concurrency", type=int, default=50,
                        help="websocket handshakes in flight at once")
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse()))
