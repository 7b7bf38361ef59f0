"""The Redis client every paystream role uses: each command bounded by one deadline, and no
command that can swallow a cancellation.

redis-py bounds a socket write with ``asyncio.wait_for`` when a ``socket_timeout`` is set. On
Python 3.11 ``wait_for`` loses a cancellation that arrives while its inner write finishes in the
same step (CPython gh-86296, fixed in 3.12): the command returns normally and the cancelled task
runs on. A subscription ended by its client while it read the cache kept streaming that way
(a "zombie"; graphql-ws then waited for it for ever and stopped answering the connection). So
the client is built without a socket timeout and :class:`BoundedRedis` bounds each command with
``asyncio.timeout`` instead, which keeps cancellations and raises ``TimeoutError`` (an
``OSError``, which every caller already treats as Redis being unavailable).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry


class BoundedRedis(Redis):
    """A Redis client whose every command (scripts included) ends within ``command_timeout_s``."""

    command_timeout_s: float = 0.5

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with asyncio.timeout(self.command_timeout_s):
            return await super().execute_command(  # type: ignore[no-untyped-call]  # untyped upstream
                *args, **options)


def redis_client(url: str, timeout_s: float, *, pool: ConnectionPool | None = None,
                 owns_pool: bool = False) -> BoundedRedis:
    """A client for ``url`` with its own pool, or on ``pool`` (which the caller closes unless
    ``owns_pool``)."""
    client = BoundedRedis(connection_pool=pool or ConnectionPool.from_url(
        url, **pool_options(timeout_s)))
    # A pool made here (or handed over) is the client's own: closing the client disconnects it.
    client.auto_close_connection_pool = pool is None or owns_pool
    client.command_timeout_s = timeout_s
    return client


def blocking_client(url: str, timeout_s: float, max_connections: int) -> BoundedRedis:
    """A client on its own pool of at most ``max_connections`` that makes a command wait for a
    free connection (within the command's deadline) instead of failing it. redis-py's default
    pool raises "Too many connections" at once past 100: under a burst that read as Redis
    being down, and a limiter that fails open then let the burst through."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                           timeout=timeout_s, **pool_options(timeout_s))
    return redis_client(url, timeout_s, pool=pool, owns_pool=True)


def pool_options(timeout_s: float) -> dict[str, Any]:
    """Connection options: no socket timeout (see the module's docstring), a connect timeout,
    and one immediate retry on a connection error: after a Redis restart the pooled
    connections are dead, and the first command on each fails once before reconnecting."""
    return {
        "socket_timeout": None, "socket_connect_timeout": timeout_s, "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError],
    }
