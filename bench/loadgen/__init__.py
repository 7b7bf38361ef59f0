"""Load generators: each runs as its own process (``python -m bench.loadgen.<name>``), so the
bench process that orchestrates and the servers under test never share its event loop.

A generator writes JSON lines to standard output (the last one is its result) and its log to
standard error. :func:`run` starts one and returns that result; :class:`LineProcess` drives
one that takes commands on standard input.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from ..harness import LOGS


def argv(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", f"bench.loadgen.{module}", *map(str, args)]


class LineProcess:
    """A load generator that reads commands (one JSON object a line) on stdin and answers
    with one JSON line each on stdout."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.process, self.log_path = name, process, log_path

    @classmethod
    async def start(cls, name: str, module: str, *args: object,
                    env: dict[str, str]) -> LineProcess:
        log_path = LOGS / f"{name}.log"
        with open(log_path, "wb") as log_file:  # noqa: ASYNC230 -- a local log file, opened once
            process = await asyncio.create_subprocess_exec(
                *argv(module, *args), env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log_file,
                limit=64 << 20)  # a result line may carry every latency
        return cls(name, process, log_path)

    async def read(self, timeout: float | None = None) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            await self.process.wait()
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}): "
                               f"{self.log_path.read_text()[-2000:]}")
        return dict(json.loads(line))

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def ask(self, command: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        await self.send(command)
        return await self.read(timeout)

    async def close(self, timeout: float = 30.0) -> None:
        if self.process.returncode is None:
            if self.process.stdin is not None and not self.process.stdin.is_closing():
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def run(name: str, module: str, *args: object, env: dict[str, str],
              timeout: float | None = None) -> dict[str, Any]:
    """Run a one-shot generator to completion; its last stdout line is the result."""
    generator = await LineProcess.start(name, module, *args, env=env)
    process = generator.process
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    try:
        out = await asyncio.wait_for(process.stdout.read(), timeout)
        await process.wait()
    finally:
        await generator.close()
    lines = out.decode().splitlines()
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed ({process.returncode}): "
                           f"{generator.log_path.read_text()[-2000:]}")
    return dict(json.loads(lines[-1]))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]
