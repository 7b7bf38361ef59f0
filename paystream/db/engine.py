"""Engines and sessions. Writes go to the primary through ``WriteSession``; queries go to a
replica through ``ReadSession``. The two are distinct types so intent shows in signatures."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NewType, TypeVar

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from ..config import DatabaseSettings
from ..domain.errors import Unavailable
from ..metrics import SQL_STATEMENTS

log = logging.getLogger(__name__)

WriteSession = NewType("WriteSession", AsyncSession)
"""A session on the primary, inside one transaction that commits when the block ends."""

ReadSession = NewType("ReadSession", AsyncSession)
"""A read-only session on a replica (or on the primary when no replica answers)."""

T = TypeVar("T")


class ServerUnreachable(Unavailable):
    """No database server that could serve the request answered (or the connection was lost
    mid-request). The caller may retry; createPayment's idempotency key makes that safe even
    when the connection was lost around a commit."""

    def __init__(self, message: str = "the database is unavailable; retry shortly") -> None:
        super().__init__(message)


class DatabaseBusy(Unavailable):
    """No pooled connection came free within ``pool_timeout_s``: this process has more work
    in flight than connections. The request was not executed; it may be retried."""

    def __init__(self) -> None:
        super().__init__("the service is busy; retry shortly")


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server could not be reached, as opposed to a bad query."""
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, InterfaceError):
            return True
        orig = getattr(exc, "orig", None)
        cause = getattr(orig, "__cause__", None) or orig
        name = type(cause).__name__
        return isinstance(cause, (OSError, TimeoutError)) or name in _UNREACHABLE_NAMES
    return False


# Conflicts between concurrent transactions: the same work retried later succeeds.
_TRANSIENT_SQLSTATES = {"40P01", "40001"}  # deadlock_detected, serialization_failure


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a conflict with another transaction (a deadlock victim, a
    serialization failure): not the request's fault, so it is retried, never dead-lettered."""
    if isinstance(exc, DBAPIError):
        orig = getattr(exc, "orig", None)
        cause = getattr(orig, "__cause__", None) or orig
        return getattr(cause, "sqlstate", None) in _TRANSIENT_SQLSTATES
    return False


# asyncpg's names for a lost or refused connection, and a server still starting up.
_UNREACHABLE_NAMES = {
    "ConnectionDoesNotExistError",
    "CannotConnectNowError",
    "ConnectionFailureError",
    "InterfaceError",
    "AdminShutdownError",
    "CrashShutdownError",
}


def make_engine(url: str, settings: DatabaseSettings, *, read_only: bool = False,
                role: str = "primary") -> AsyncEngine:
    server_settings = {
        "statement_timeout": str(settings.statement_timeout_ms),
        "application_name": "paystream",
        "plan_cache_mode": settings.plan_cache_mode,
    }
    if read_only:
        server_settings["default_transaction_read_only"] = "on"
    engine = create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_s,
        pool_pre_ping=False,
        connect_args={"server_settings": server_settings, "timeout": settings.connect_timeout_s},
    )
    counter = SQL_STATEMENTS.labels(role)
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda *args, **kwargs: counter.inc())
    return engine


class Database:
    """The primary engine and the replica engines of one process."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.primary = make_engine(settings.primary_url, settings)
        # Reads that fall back to the primary still run read-only.
        self._primary_reader = make_engine(settings.primary_url, settings, read_only=True)
        self.replicas = [make_engine(u, settings, read_only=True, role="replica")
                         for u in settings.replica_urls]
        self._next_replica = itertools.cycle(range(len(self.replicas)))
        self._down_until: dict[int, float] = {}
        self.replica_retry_s = 2.0

    @asynccontextmanager
    async def write_session(self) -> AsyncIterator[WriteSession]:
        """One transaction on the primary: commits at the end of the block, rolls back on error."""
        try:
            async with AsyncSession(self.primary, expire_on_commit=False) as session, \
                    session.begin():
                yield WriteSession(session)
        except PoolTimeout:
            raise DatabaseBusy() from None
        except Exception as exc:
            if is_unreachable(exc):
                raise ServerUnreachable() from exc
            raise

    async def read(self, work: Callable[[ReadSession], Awaitable[T]], *, primary: bool = False) -> T:
        """Run ``work`` in a read-only session: the next healthy replica, round robin, else the
        primary. A replica that cannot be reached is skipped for a moment and the work retried
        on the next server, so a replica outage costs a retry, not an error.

        ``primary=True`` reads the primary directly (read-your-writes while a replica lags).
        """
        last_error: BaseException | None = None
        for index, engine in self._readers(primary):
            try:
                async with AsyncSession(engine, expire_on_commit=False) as session:
                    return await work(ReadSession(session))
            except PoolTimeout:
                raise DatabaseBusy() from None
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                last_error = exc
                if index is not None:
                    log.warning("replica %d unreachable, trying the next: %s", index, type(exc).__name__)
                    self._down_until[index] = time.monotonic() + self.replica_retry_s
        raise ServerUnreachable() from last_error

    def _readers(self, primary: bool) -> list[tuple[int | None, AsyncEngine]]:
        if primary or not self.replicas:
            return [(None, self._primary_reader)]
        now = time.monotonic()
        start = next(self._next_replica)
        order = [(start + i) % len(self.replicas) for i in range(len(self.replicas))]
        healthy: list[tuple[int | None, AsyncEngine]] = [
            (i, self.replicas[i]) for i in order if self._down_until.get(i, 0.0) <= now
        ]
        return [*healthy, (None, self._primary_reader)]

    async def primary_wal_position(self) -> str:
        """Where the primary's WAL ends now: everything committed so far is before it."""
        async def position(session: ReadSession) -> str:
            lsn = await session.execute(text("SELECT pg_current_wal_insert_lsn()::text"))
            return str(lsn.scalar())

        return await self.read(position, primary=True)

    async def replicas_replayed(self, position: str) -> bool:
        """Whether every replica has replayed the primary's WAL up to ``position``. A replica
        that does not answer has not (it may come back behind)."""
        for engine in self.replicas:
            try:
                async with engine.connect() as conn:
                    caught_up = (await conn.execute(
                        text("SELECT pg_last_wal_replay_lsn() >= CAST(CAST(:position AS text) AS pg_lsn)"),
                        {"position": position})).scalar()
            except PoolTimeout:
                return False
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                return False
            if not caught_up:
                return False
        return True

    async def replica_status(self) -> list[bool]:
        """Whether each replica answers a trivial query now."""
        results = []
        for engine in self.replicas:
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                results.append(True)
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                results.append(False)
        return results

    async def dispose(self) -> None:
        for engine in (self.primary, self._primary_reader, *self.replicas):
            await engine.dispose()
