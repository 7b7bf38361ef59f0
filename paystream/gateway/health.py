"""Readiness: each backing server checked and reported by name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from sqlalchemy import text

from ..db.outbox import backlog
from ..metrics import OUTBOX_COUNT_CAP, OUTBOX_OLDEST_UNSENT_SECONDS, OUTBOX_UNSENT
from ..services.app import Services


async def _primary(services: Services) -> bool:
    try:
        async with services.db.primary.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 (any failure means not ready; the reason is not for clients)
        return False


async def _redis(services: Services) -> bool:
    from redis.asyncio import Redis

    client = Redis.from_url(services.settings.redis.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except Exception:  # noqa: BLE001 (any failure means not ready; the reason is not for clients)
        return False
    finally:
        await client.aclose()


async def _kafka(services: Services) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=services.settings.kafka.bootstrap_servers, request_timeout_ms=1500
    )
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:  # noqa: BLE001 (any failure means not ready; the reason is not for clients)
        return False
    finally:
        await admin.close()


async def outbox_backlog(services: Services) -> dict[str, float] | None:
    """Accepted messages not produced yet, and the age of the oldest (None: no primary). A
    backlog is no reason to leave the load balancer: payments are still accepted, and they
    flow when the broker is back; the numbers say how far behind that is. Also the gauges."""
    try:
        async with services.db.write_session() as session:
            async with asyncio.timeout(1.0):  # not wait_for: it may lose a cancellation on 3.11
                unsent, oldest = await backlog(session, cap=OUTBOX_COUNT_CAP)
    except Exception:  # noqa: BLE001 (the primary's own check reports it)
        return None
    OUTBOX_UNSENT.set(unsent)
    OUTBOX_OLDEST_UNSENT_SECONDS.set(oldest)
    return {"unsent": unsent, "oldest_unsent_s": round(oldest, 3)}


# The checks that decide readiness; every other one only marks the process degraded.
ESSENTIAL = ("primary", "status_stream")


async def readiness(services: Services) -> dict[str, object]:
    """{"ready": bool, "checks": {name: bool}, "degraded": [name], "outbox": backlog}; each
    check bounded by a short timeout.

    Ready means this process can do its work: the primary (acceptance is its commit) and the
    process's own status stream (without it live updates and cache refresh stop here). Replicas,
    Redis and the broker are reported, and listed under "degraded" when down, but do not take
    the process out of the load balancer: the service survives their outages (reads fall back
    to the primary, limits and the cache degrade, the outbox holds payments), while one Redis
    blip would otherwise take every API process out at once."""

    async def bounded(coro: Awaitable[object]) -> object:
        # asyncio.timeout, as for the backlog above: wait_for may lose a cancellation on 3.11.
        try:
            async with asyncio.timeout(2.0):
                return await coro
        except TimeoutError:
            return False

    primary, replicas, redis, kafka, outbox = await asyncio.gather(
        bounded(_primary(services)), bounded(services.db.replica_status()),
        bounded(_redis(services)), bounded(_kafka(services)), outbox_backlog(services),
    )
    checks: dict[str, bool] = {"primary": bool(primary), "redis": bool(redis), "kafka": bool(kafka),
                               "status_stream": services.hub.positioned.is_set()}
    replica_list = replicas if isinstance(replicas, list) else [False] * len(services.db.replicas)
    for index, up in enumerate(replica_list):
        checks[f"replica{index}"] = bool(up)
    ready = all(checks[name] for name in ESSENTIAL)
    degraded = sorted(name for name, up in checks.items() if not up and name not in ESSENTIAL)
    return {"ready": ready, "checks": checks, "degraded": degraded, "outbox": outbox}
