"""What every scenario shares: the stack, a worker, seeded data, API processes, wrk, results.

A scenario is a module under ``bench/scenarios`` with ``async def run(ctx) -> Scenario``.
Servers under test and load generators run as separate processes; the bench process only
orchestrates and reads results.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from paystream.config import Settings
from paystream.devstack import free_port
from paystream.progress import progress as bar
from paystream.services.admin import new_account, new_partner
from paystream.services.app import Services

from .common import server_env

LOGS = Path(tempfile.mkdtemp(prefix="paystream-bench-logs-"))
# The bench measures speed, not the rate limiter's refusals: limits far above any load here
# (the limiter still runs: one Redis script per request, as in production).
UNLIMITED = {
    "PAYSTREAM_LIMITS__QUERY_RATE_PER_S": "1000000", "PAYSTREAM_LIMITS__QUERY_BURST": "1000000",
    "PAYSTREAM_LIMITS__MUTATION_RATE_PER_S": "1000000",
    "PAYSTREAM_LIMITS__MUTATION_BURST": "1000000",
    # Scenario 6 opens 10,000 subscriptions with one key in a few seconds.
    "PAYSTREAM_LIMITS__SUBSCRIBE_RATE_PER_S": "1000000",
    "PAYSTREAM_LIMITS__SUBSCRIBE_BURST": "1000000",
    "PAYSTREAM_DB__POOL_SIZE": "20",
}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the summary table: a figure, its baseline from the same run, the target."""

    scenario: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


@dataclass
class Scenario:
    name: str
    rows: list[Row]
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Server:
    """A server process under test (the API, or a baseline app) on its own port."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, path: str = "/healthz", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
                try:
                    response = await http.get(path)
                    if response.status_code == 200 and (
                            path != "/readyz" or response.json()["checks"]["status_stream"]):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready: {self.log_path.read_text()[-2000:]}")
                await asyncio.sleep(0.1)

    def rss_bytes(self) -> int:
        """Resident memory of the process and its children (uvicorn workers)."""
        import psutil

        parent = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn(name: str, argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = LOGS / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return process, log_path


@dataclass
class BenchContext:
    settings: Settings
    stack: Any
    env: dict[str, str]
    services: Services
    key: str = ""
    partner: str = ""
    accounts: list[str] = field(default_factory=list)
    payments: list[str] = field(default_factory=list)
    listed_account: str = ""
    worker: subprocess.Popen[bytes] | None = None
    seconds: float = 20.0
    quick: bool = False

    async def start_api(self, workers: int = 1, **extra: str) -> Server:
        port = free_port()
        process, log_path = spawn(
            f"api-w{workers}",
            [sys.executable, "-m", "paystream.cli", "api", "--port", str(port),
             "--workers", str(workers)],
            {**self.env, **UNLIMITED, **extra},
        )
        server = Server(f"api --workers {workers}", process, port, log_path)
        await server.wait_ready("/readyz")
        return server

    async def start_app(self, module: str, **extra: str) -> Server:
        """A baseline app (``bench.apps.<module>:app``) under the same uvicorn settings."""
        port = free_port()
        process, log_path = spawn(module, [
            sys.executable, "-m", "uvicorn", f"bench.apps.{module}:app", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
        ], {**self.env, **extra})
        server = Server(module, process, port, log_path)
        await server.wait_ready("/healthz")
        return server

    def start_worker(self) -> subprocess.Popen[bytes]:
        process, _ = spawn("worker", [sys.executable, "-m", "paystream.cli", "worker"], self.env)
        return process

    async def pending(self) -> int:
        async with self.services.db.primary.connect() as conn:
            return int((await conn.execute(
                text("SELECT count(*) FROM payments WHERE status = 'PENDING'"))).scalar() or 0)

    async def wait_drained(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        left = await self.pending()
        # On a terminal, a bar of the payments posted so far (drains take minutes).
        with bar(left, "worker draining") as drained:
            while left:
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not drain the backlog")
                # Each poll is a sequential scan of payments (26 ms at 100,000 rows; read
                # per account through the status index, 55 ms): every 2 s while the backlog is
                # large, so that the bench's own load on the primary under test stays near
                # 1% (at 0.5 s it was 2.6 s of a 100,000-payment drain's primary time,
                # docs/benchmarks.md 2026-12-07). Drain times come from updated_at anyway.
                await asyncio.sleep(2.0 if left > 5_000 else 0.5)
                now = await self.pending()
                drained.advance(max(0, left - now))
                left = now


async def seed(ctx: BenchContext, accounts: int = 50, listed_payments: int = 60) -> None:
    """A partner with ``accounts`` USD accounts, and ``listed_payments`` payments out of the
    first account (the nested-list scenario reads its 50 latest), all posted."""
    from paystream.services.payments import CreatePayment

    ctx.partner = f"bench-{uuid.uuid4().hex[:8]}"
    ctx.key = await new_partner(ctx.services.db, ctx.partner)
    ctx.accounts = [str(await new_account(ctx.services.db, partner=ctx.partner, name=f"acct {i}",
                                          currency="USD", balance="100000000.00"))
                    for i in range(accounts)]
    ctx.listed_account = ctx.accounts[0]
    caller = await ctx.services.auth.caller_for(f"Bearer {ctx.key}")
    for i in range(listed_payments):
        row = await ctx.services.payments.create(caller, CreatePayment(
            idempotency_key=f"seed-{i}", source_account_id=ctx.listed_account,
            destination_account_id=ctx.accounts[1 + i % (accounts - 1)], amount="1.00",
            currency="USD"))
        ctx.payments.append(str(row.id))
    await ctx.wait_drained()


WRK_LATENCY = re.compile(r"^\s+(50|75|90|99)(?:\.\d+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def wrk(url: str, script: Path, *, connections: int, seconds: float,
        env: dict[str, str] | None = None) -> WrkResult:
    """wrk (Debian's package), one thread, as a separate process; the Lua script builds the
    requests. Latency percentiles are wrk's (corrected for coordinated omission)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    done = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script),
         url],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True,
    )
    out = done.stdout
    percentiles = {p: float(v) * _UNIT[u] for p, v, u in WRK_LATENCY.findall(out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests_per_s=rps, p50_ms=percentiles["50"], p99_ms=percentiles["99"],
        requests=requests, non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(map(int, errors.groups())) if errors else 0,
    )


def graphql_lua(path: Path, *, query: str, variables: dict[str, Any], key: str,
                rotate: dict[str, list[str]] | None = None, unique: str | None = None) -> Path:
    """A wrk script that POSTs the query. ``rotate`` cycles a variable through values;
    ``unique`` names an input field given a fresh value per request (idempotency keys)."""
    lines = [
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        f'wrk.headers["Authorization"] = "Bearer {key}"',
        "local n = 0",
        f'local prefix = "{uuid.uuid4().hex[:8]}"',
    ]
    body = json.dumps({"query": query, "variables": variables})
    if not rotate and not unique:
        lines.append(f"wrk.body = {json.dumps(body)}")
        path.write_text("\n".join(lines) + "\n")
        return path
    for name, values in (rotate or {}).items():
        lines.append(f"local {name}_values = {{{', '.join(json.dumps(v) for v in values)}}}")
    lines.append("request = function()")
    lines.append("  n = n + 1")
    # Each marker in the JSON body is replaced with a Lua expression.
    template = body
    substitutions = []
    for name, values in (rotate or {}).items():
        marker = f"@@{name}@@"
        template = template.replace(json.dumps(values[0]), json.dumps(marker), 1)
        substitutions.append((marker, f"{name}_values[(n % #{name}_values) + 1]"))
    if unique:
        marker = f"@@{unique}@@"
        template = template.replace('"UNIQUE"', json.dumps(marker), 1)
        substitutions.append((marker, 'prefix .. "-" .. n'))
    expr = json.dumps(template)
    lines.append(f"  local body = {expr}")
    for marker, lua in substitutions:
        lines.append(f'  body = string.gsub(body, "{marker}", {lua})')
    lines.append("  return wrk.format(nil, nil, nil, body)")
    lines.append("end")
    path.write_text("\n".join(lines) + "\n")
    return path


async def scrape(server: Server, name: str) -> float:
    """The sum of one Prometheus series' samples, from the server's /metrics."""
    async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as http:
        body = (await http.get("/metrics")).text
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def server_env_for(settings: Settings) -> dict[str, str]:
    return server_env(settings)


async def check_query(server: Server, query: str, variables: dict[str, Any], key: str) -> dict[str, Any]:
    """One request before a load phase: the load must measure answers, not errors."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
        response = await http.post("/graphql", json={"query": query, "variables": variables},
                                   headers={"Authorization": f"Bearer {key}"})
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"{server.name} answered {response.status_code}: {body}")
    return dict(body["data"])


async def redis_commands(url: str) -> int:
    """Commands the Redis server has executed so far (all clients)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_")
                   and k not in ("cmdstat_info",))
    finally:
        await client.aclose()


def scripts_dir() -> Path:
    path = LOGS / "lua"
    path.mkdir(exist_ok=True)
    return path


def profile(switch: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling ``pid`` for ``seconds`` into ``output`` (raw collapsed stacks), when
    the environment variable ``switch`` is set and py-spy is installed."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.environ.get(switch) or not Path(binary).exists():
        return None
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--rate", "100", "--nonblocking", "--nolineno", "--format", "raw",
                             "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, what: str, top: int = 40) -> str:
    """Self and total sample shares of the hottest frames, from collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples of {what}", "", "self%  frame"]
    lines += [f"{100 * n / samples:5.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total%  frame"]
    lines += [f"{100 * n / samples:5.1f}  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines) + "\n"
