"""Single-flight under cancellation: a request that gives up (its client went away, a timeout)
never takes the shared read down with it for the requests waiting on the same key."""

from __future__ import annotations

import asyncio

import pytest

from paystream.cache.singleflight import SingleFlight


class Source:
    """A load that blocks until released and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()

    async def load(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(keys)
        await self.release.wait()
        return {k: k.upper() for k in keys}


async def started(*tasks: asyncio.Task[object]) -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # each task reaches its first real wait


async def test_a_waiter_that_is_cancelled_leaves_the_read_to_the_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    source = Source()
    leader = asyncio.create_task(flight.load_many(["a"], source.load))
    quitter = asyncio.create_task(flight.load_many(["a"], source.load))
    patient = asyncio.create_task(flight.load_many(["a"], source.load))
    await started(leader, quitter, patient)
    quitter.cancel()
    source.release.set()
    assert await leader == {"a": "A"}
    assert await patient == {"a": "A"}
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert source.calls == [["a"]]


async def test_when_the_loader_is_cancelled_the_waiters_load_for_themselves() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    source = Source()
    leader = asyncio.create_task(flight.load_many(["a"], source.load))
    waiter = asyncio.create_task(flight.load_many(["a", "b"], source.load))
    await started(leader, waiter)
    leader.cancel()
    await asyncio.sleep(0)
    source.release.set()
    assert await waiter == {"a": "A", "b": "B"}
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert source.calls == [["a"], ["b"], ["a"]]  # the waiter read "a" again itself
