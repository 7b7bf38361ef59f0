"""Single-flight: concurrent cold misses on one key share one database read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, MutableMapping, Sequence
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LoaderCancelled(Exception):
    """The request reading a key was cancelled before it finished; its waiters read it."""


class SingleFlight(Generic[K, V]):
    """Per process: a key already being loaded is awaited, not loaded again.

    Requests come and go independently, so cancellation never crosses between them: a
    waiter that is cancelled stops waiting without cancelling the shared read (it is
    shielded), and when the request doing the read is cancelled its waiters read the key
    themselves instead of inheriting the cancellation. (Inheriting it killed the waiters'
    DataLoader batch tasks, and their requests then hung in ``load()``.)
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V | None]] = {}

    async def load_many(self, keys: Sequence[K],
                        load: Callable[[list[K]], Awaitable[dict[K, V]]]) -> dict[K, V]:
        waiting = {k: self._inflight[k] for k in keys if k in self._inflight}
        mine = [k for k in dict.fromkeys(keys) if k not in waiting]
        futures: dict[K, asyncio.Future[V | None]] = {}
        if mine:
            loop = asyncio.get_running_loop()
            for key in mine:
                futures[key] = self._inflight[key] = loop.create_future()
            try:
                loaded = await load(mine)
            except BaseException as exc:
                failure = _LoaderCancelled() if isinstance(exc, asyncio.CancelledError) else exc
                for key, future in futures.items():
                    self._inflight.pop(key, None)
                    if not future.done():
                        future.set_exception(failure)
                        future.exception()  # retrieved here: the waiters re-raise it
                raise
            for key, future in futures.items():
                self._inflight.pop(key, None)
                future.set_result(loaded.get(key))
        result: dict[K, V] = {}
        orphaned: list[K] = []
        for key in keys:
            pending = futures.get(key) or waiting.get(key)
            if pending is None:
                continue
            try:
                value = await asyncio.shield(pending)
            except _LoaderCancelled:
                orphaned.append(key)
                continue
            if value is not None:
                result[key] = value
        if orphaned:
            result.update(await self.load_many(orphaned, load))
        return result


def shared_task(memo: MutableMapping[Any, Any], key: Hashable, work: Awaitable[V],
                entry: Callable[[asyncio.Future[V]], object] = lambda task: task
                ) -> asyncio.Future[V]:
    """Start ``work`` once for everyone asking for ``key``, kept in ``memo`` as
    ``entry(task)``. A failed or cancelled task is dropped, so the next asker starts again."""
    task = asyncio.ensure_future(work)

    def forget_failure(done: asyncio.Future[V]) -> None:
        if done.cancelled() or done.exception() is not None:
            memo.pop(key, None)

    task.add_done_callback(forget_failure)
    memo[key] = entry(task)
    return task


def joined(task: asyncio.Future[V]) -> V | asyncio.Future[V]:
    """A shared task's result when it is in (the usual case for all but the first asker),
    else a shielded wait for it: one asker leaving cancels nothing for the others."""
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return asyncio.shield(task)

