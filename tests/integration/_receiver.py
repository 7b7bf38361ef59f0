"""A real webhook receiver for the tests: uvicorn on loopback, recording every request, able
to answer 500 or to be down (its port closed) and come back on the same port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    def __init__(self) -> None:
        # The port is held by the test while the receiver is down, so nothing else takes it.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self.answer = 200
        self.answers: dict[str, int] = {}  # per path, over ``answer``
        self.redirects: set[str] = set()  # paths answering 307 to "<path>-target"
        self.slow: dict[str, float] = {}  # paths answering only after this many seconds
        self.answered_slowly: list[str] = []  # slow paths, as each answer goes out
        self.active: dict[str, int] = {}  # requests of a slow path being answered now
        self.most_active: dict[str, int] = {}  # the most there were at once
        # Paths answering 200 with a 100 MiB body; how many 64 KiB chunks went out, and set
        # once the body ended (sent or cut by the client).
        self.huge: set[str] = set()
        self.drip: set[str] = set()  # paths answering 200 and then a byte every 0.5 s
        self.huge_chunks_sent = 0
        self.huge_ended = asyncio.Event()
        self.requests: list[Received] = []
        self._changed = asyncio.Condition()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._hook, methods=["POST"])])

    def url(self, path: str = "hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path}"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path.lstrip("/")
        answer = self.answers.get(path, self.answer)
        received = Received(path, dict(request.headers), body, answer)
        async with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
        if path in self.redirects:
            return Response(status_code=307, headers={"Location": f"/{path}-target"})
        if path in self.slow:
            self.active[path] = self.active.get(path, 0) + 1
            self.most_active[path] = max(self.most_active.get(path, 0), self.active[path])
            await asyncio.sleep(self.slow[path])  # a slow server, not a synchronisation
            self.active[path] -= 1
            async with self._changed:
                self.answered_slowly.append(path)
                self._changed.notify_all()
        if path in self.huge:
            return StreamingResponse(self._huge_body(request), status_code=200)
        if path in self.drip:
            return StreamingResponse(self._drip_body(request), status_code=200)
        return Response("ok" if answer < 300 else "no", status_code=answer)

    async def _huge_body(self, request: Request) -> Any:
        # uvicorn drops writes to a closed connection silently, so the body stops only when
        # the client's hang-up is noticed.
        try:
            for _ in range(1600):
                if await request.is_disconnected():
                    break
                yield b"x" * 65536
                self.huge_chunks_sent += 1
        finally:
            self.huge_ended.set()

    async def _drip_body(self, request: Request) -> Any:
        for _ in range(2400):
            if await request.is_disconnected():
                return
            yield b"x"
            await asyncio.sleep(0.5)  # a slow server, not a synchronisation

    async def start(self) -> None:
        """Listening as soon as this returns (the socket is bound and listening before
        uvicorn serves it, so no connection is refused in between)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self._socket = sock
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None

    async def wait_for(self, predicate: Callable[[list[Received]], bool],
                       timeout: float = 30.0) -> list[Received]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.requests))
        return list(self.requests)

    async def wait_answered_slowly(self, path: str, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: path in self.answered_slowly)

    def delivered(self, path: str | None = None) -> list[Received]:
        return [r for r in self.requests if r.answered < 300 and (path is None or r.path == path)]
