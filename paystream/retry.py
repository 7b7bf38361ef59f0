"""One retry policy for the roles that must outlast their dependencies (the worker, the outbox
relay, the status consumer), and the one place that tells a fault from a data error.

A *fault* is the world's problem, not the message's: a lost or refused connection, a server
shutting down, a statement or lock timeout, a deadlock or serialization failure, too many
connections, a broker that does not answer. The same work succeeds later, so it is retried
with capped exponential backoff and jitter (tenacity), for as long as it takes; it is never
dead-lettered. A *data error* (SQLSTATE classes 22 and 23: a value or a constraint the
request violates) will fail the same way every time, so the caller isolates the request that
causes it and parks it. Anything else is a bug or a misconfiguration: retried like a fault
(nothing is parked for it) but logged as an error each time, so an operator sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TypeVar

from aiokafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_exponential,
    wait_random,
)

from .db.engine import is_unreachable
from .domain.errors import Unavailable

log = logging.getLogger("paystream.retry")

T = TypeVar("T")


class Failure(Enum):
    FAULT = "fault"
    DATA = "data"
    BUG = "bug"


# Classes and codes the server answers when the same statement will work later.
_FAULT_CLASSES = {"08", "53", "57", "58", "40"}  # connection, resources, operator, system, rollback
_FAULT_CODES = {"55P03", "55006"}  # lock_not_available (lock_timeout), object_in_use
_DATA_CLASSES = {"22", "23"}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (asyncpg's, behind SQLAlchemy's wrapper), if any."""
    if not isinstance(exc, DBAPIError):
        return None
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def classify(exc: BaseException) -> Failure:
    """Fault (retry), data error (isolate and park) or bug (retry, loudly)."""
    if isinstance(exc, (Unavailable, KafkaError, PoolTimeout)) or is_unreachable(exc):
        return Failure.FAULT
    code = sqlstate(exc)
    if code is not None:
        if code in _FAULT_CODES or code[:2] in _FAULT_CLASSES:
            return Failure.FAULT
        if code[:2] in _DATA_CLASSES:
            return Failure.DATA
    return Failure.BUG


def _worth_retrying(exc: BaseException) -> bool:
    # Cancellation (and KeyboardInterrupt) is no failure: it ends the work, unretried.
    return isinstance(exc, Exception) and classify(exc) is not Failure.DATA


def _log_before_sleep(what: str, on_sleep: Callable[[], None] | None) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        kind = classify(exc) if exc is not None else Failure.FAULT
        wait = state.next_action.sleep if state.next_action else 0.0
        message = "%s failed (%s: %s), attempt %d; retrying in %.2f s"
        name = type(exc).__name__ if exc else "?"
        code = sqlstate(exc) if exc else None
        detail = f"SQLSTATE {code}" if code else kind.value
        if kind is Failure.BUG:
            log.error(message, what, name, detail, state.attempt_number, wait)
        else:
            log.warning(message, what, name, detail, state.attempt_number, wait)
        if on_sleep is not None:
            on_sleep()
    return before_sleep


def retrying(what: str, *, initial_s: float = 0.1, max_s: float = 5.0,
             on_sleep: Callable[[], None] | None = None) -> AsyncRetrying:
    """The policy: retry anything but a data error, for ever, waiting 0.1 s doubling to 5 s
    with jitter. ``on_sleep`` runs before each wait (the worker touches its heartbeat, so a
    health check does not kill a worker that is waiting out an outage)."""
    return AsyncRetrying(
        retry=retry_if_exception(_worth_retrying),
        wait=wait_exponential(multiplier=initial_s, max=max_s) + wait_random(0, initial_s),
        stop=stop_never,
        before_sleep=_log_before_sleep(what, on_sleep),
        reraise=True,
    )


async def until_done(what: str, work: Callable[[], Awaitable[T]], *,
                     on_sleep: Callable[[], None] | None = None, initial_s: float = 0.1,
                     max_s: float = 5.0) -> T:
    """Run ``work`` under :func:`retrying`; a data error propagates at once."""
    async for attempt in retrying(what, on_sleep=on_sleep, initial_s=initial_s, max_s=max_s):
        with attempt:
            return await work()
    raise AssertionError("unreachable: the policy never stops")  # pragma: no cover


__all__ = ["Failure", "classify", "retrying", "sqlstate", "until_done"]
