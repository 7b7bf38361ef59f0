"""The worker serves /metrics only when PAYSTREAM_METRICS__WORKER_PORT is set, for as long as
the worker runs, with the backlog series in it. No servers: the sampler's reads fail (and are
only logged) against addresses where nothing listens."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from paystream.config import Settings
from paystream.devstack import free_port
from paystream.worker.backlog import run_observed

NOWHERE = {"db": {"primary_url": "postgresql+asyncpg://u:p@127.0.0.1:1/none"},
           "redis": {"url": "redis://127.0.0.1:1"}, "kafka": {"bootstrap_servers": "127.0.0.1:1"}}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_metrics_are_served_while_the_worker_runs_and_not_after() -> None:
    port = free_port()
    settings = Settings(**NOWHERE, metrics={"worker_port": port})  # type: ignore[arg-type]
    seen: list[str] = []

    async def worker() -> None:
        seen.append(await asyncio.to_thread(scrape, port))

    await run_observed(settings, worker())
    for series in ("paystream_outbox_unsent", "paystream_outbox_oldest_unsent_seconds",
                   "paystream_consumer_lag", "paystream_graphql_requests_total"):
        assert f"# TYPE {series.removesuffix('_total')}" in seen[0], series
    with pytest.raises(OSError):  # the server stopped with the worker
        scrape(port)


async def test_without_a_port_only_the_worker_runs() -> None:
    settings = Settings(**NOWHERE)  # type: ignore[arg-type]
    assert settings.metrics.worker_port == 0
    ran: list[bool] = []

    async def worker() -> None:
        ran.append(True)

    await run_observed(settings, worker())
    assert ran == [True]
