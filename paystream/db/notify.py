"""PostgreSQL LISTEN on the primary: notifications committed by other processes, pushed.

A ``NOTIFY`` is delivered when, and only if, its transaction commits, so a listener hears
exactly the committed changes. What it cannot hear is what was committed while it was not
connected: :func:`listen` tells its caller when the connection is up (``on_ready``, after
``LISTEN`` took effect) and when it is lost (``on_lost``), and checks the connection every
``ping_s`` so that a connection that died silently (no FIN: a network partition) counts as
lost within ``ping_s`` plus the ping's own timeout of the same length.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger("paystream.db")


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+asyncpg://...``) as a libpq DSN for asyncpg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(url: str, channel: str, on_message: Callable[[str], None], *,
                 on_ready: Callable[[], None], on_lost: Callable[[], None],
                 ping_s: float = 0.5, connect_timeout_s: float = 2.0,
                 application_name: str = "paystream-listener") -> None:
    """Listen on ``channel`` until cancelled, reconnecting after a loss (at most every
    ``ping_s`` seconds, so a primary that is down is not hammered)."""
    while True:
        try:
            connection = await asyncpg.connect(
                asyncpg_dsn(url), timeout=connect_timeout_s,
                server_settings={"application_name": application_name})
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("cannot listen on %s (%s); retrying", channel, type(exc).__name__)
            await asyncio.sleep(ping_s)
            continue
        try:
            await connection.add_listener(
                channel, lambda _conn, _pid, _channel, payload: on_message(str(payload)))
            on_ready()
            while True:
                # A timer, not synchronisation: the ping is the liveness check itself.
                await asyncio.sleep(ping_s)
                async with asyncio.timeout(ping_s):
                    await connection.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("lost the listen connection for %s (%s)", channel, type(exc).__name__)
        finally:
            on_lost()
            connection.terminate()
