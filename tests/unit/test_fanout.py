"""Fan-out below Strawberry, without servers: when a watch hands an event to its stream's
direct sender, and what ``direct_payload`` shares, refuses and counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import strawberry
from entity_samples import NOWHERE, sample_accounts, sample_payment
from strawberry.extensions import ParserCache

from paystream.config import Settings
from paystream.events.messages import PaymentStatusEvent
from paystream.metrics import REGISTRY
from paystream.schema.sharing import (
    OPERATION_FRAMES,
    OperationFrames,
    SharedEventExecutor,
    direct_payload,
)
from paystream.services.status_hub import StatusHub, Watch


class _Hub:
    def _forget(self, watch: Watch) -> None:
        pass


def _event(name: str) -> PaymentStatusEvent:
    return cast(PaymentStatusEvent, name)  # the watch only passes events on


def _watch() -> Watch:
    return Watch(_Hub(), payments=(), accounts=(), max_queued=10)  # type: ignore[arg-type]  # a stand-in hub


async def _parked(watch: Watch) -> asyncio.Task[Any]:
    """A task waiting in ``watch.next()`` with nothing queued."""
    task = asyncio.create_task(watch.next())
    await asyncio.sleep(0)  # one turn: the task runs up to its wait
    assert not task.done()
    return task


async def test_a_watch_hands_events_to_its_stream_only_while_it_waits_caught_up() -> None:
    watch, handed = _watch(), []

    def direct(event: object, update: object) -> bool:
        handed.append((event, update))
        return event != "refused"

    watch.direct = direct
    watch.push(_event("before"), "u0")
    assert handed == []  # nobody waiting: queued
    assert await watch.next() == "before"

    waiting = await _parked(watch)
    watch.push(_event("sent"), "u1")
    assert handed == [("sent", "u1")] and not waiting.done()
    watch.push(_event("refused"), "u2")
    assert await waiting == "refused"  # queued and woken, in order

    watch.push(_event("busy"), "u3")
    assert len(handed) == 2 and await watch.next() == "busy"

    waiting = await _parked(watch)
    watch.finish()
    assert await waiting is None
    watch.push(_event("after"), "u4")
    assert await watch.next() is None and len(handed) == 2


async def test_a_failing_direct_sender_queues_the_event_and_is_not_asked_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = _watch()

    def broken(event: object, update: object) -> bool:
        raise RuntimeError("bug")

    watch.direct = broken
    waiting = await _parked(watch)
    watch.push(_event("e1"), None)
    assert await waiting == "e1"
    assert watch.direct is None
    assert "could not send an update itself" in caplog.text


@strawberry.type
class _Item:
    name: str
    executions: strawberry.Private[dict[object, object]] = field(default_factory=dict)

    @strawberry.field
    def broken(self) -> str | None:
        raise ValueError("no")

    @strawberry.field
    async def later(self) -> str:
        await asyncio.sleep(0)
        return self.name.upper()


@strawberry.type
class _Query:
    ok: bool = True


@strawberry.type
class _Subscription:
    @strawberry.subscription
    async def items(self) -> AsyncGenerator[_Item, None]:
        yield _Item(name="first")


@dataclass(frozen=True)
class _Caller:
    partner_id: str
    scopes: frozenset[str] = frozenset({"payments:read"})


@dataclass
class _Context:
    caller: _Caller


# Documents parsed once, as paystream's schema does (CachedParse): the audience is keyed by
# the parsed operation.
_PARSED = ParserCache(maxsize=16)
_SCHEMA = strawberry.Schema(query=_Query, subscription=_Subscription,
                            extensions=[lambda: _PARSED],  # type: ignore[list-item]  # a factory, as build_schema passes them
                            execution_context_class=SharedEventExecutor)


async def _frames(partner: str, document: str) -> OperationFrames:
    """A subscription's frames, its executor recorded as the websocket handlers arrange."""
    frames = OperationFrames()

    async def operation() -> None:
        OPERATION_FRAMES.set(frames)
        stream = await _SCHEMA.subscribe(document, context_value=_Context(_Caller(partner)))
        async for _ in stream:  # type: ignore[union-attr]  # a stream, not an error
            break

    await asyncio.create_task(operation())
    assert frames.executor is not None
    return frames


def _counts() -> dict[str, float]:
    return {name: REGISTRY.get_sample_value(series, labels) or 0.0
            for name, series, labels in (
                ("encoded", "paystream_subscription_payloads_total", {"encoding": "encoded"}),
                ("reused", "paystream_subscription_payloads_total", {"encoding": "shared"}),
                ("executed", "paystream_subscription_updates_total", {"execution": "executed"}),
                ("shared", "paystream_subscription_updates_total", {"execution": "shared"}))}


async def test_a_payload_is_executed_and_encoded_once_per_audience() -> None:
    document = "subscription { items { name } }"
    first, again, other = [await _frames(p, document) for p in ("p1", "p1", "p2")]
    item = _Item(name="x")
    before = _counts()
    payloads = [direct_payload(f, item, lambda: None) for f in (first, again, other)]
    after = _counts()
    assert payloads[0] is payloads[1] and payloads[0] == b'{"data":{"items":{"name":"x"}}}'
    assert payloads[2] == payloads[0] and payloads[2] is not payloads[0]  # its own audience
    assert {k: after[k] - before[k] for k in after} == {
        "encoded": 2, "reused": 1, "executed": 2, "shared": 1}


async def test_results_with_errors_are_not_sent_directly() -> None:
    frames = await _frames("p1", "subscription { items { name broken } }")
    assert direct_payload(frames, _Item(name="x"), lambda: None) is None


async def test_a_selection_that_needs_a_read_is_started_and_sent_directly_once_in() -> None:
    frames = await _frames("p1", "subscription { items { later } }")
    item, refreshed = _Item(name="x"), []
    assert direct_payload(frames, item, lambda: refreshed.append(1)) is None
    assert refreshed == [1]  # fresh loaders before executing
    [shared] = item.executions.values()
    await shared.outcome  # type: ignore[attr-defined]  # the shared task, kept in the memo
    assert direct_payload(frames, item, lambda: refreshed.append(2)) == (
        b'{"data":{"items":{"later":"X"}}}')
    assert refreshed == [1]  # not executed again


async def test_the_hub_builds_a_batchs_updates_in_one_call_and_hands_each_watch_its_own() -> None:
    hub = StatusHub(Settings(**NOWHERE), cache=None)
    hub.positioned.set()  # no consumer here: apply() is handed the batch directly
    first, second, unwatched = sample_payment(), sample_payment(), sample_payment()
    calls: list[list[PaymentStatusEvent]] = []

    async def prepare(events: list[PaymentStatusEvent]) -> list[object]:
        calls.append(events)
        return [f"update of {e.payment_id}" for e in events]

    hub.prepare = prepare
    handed: dict[str, list[tuple[PaymentStatusEvent, object]]] = {"first": [], "second": []}
    waiting = []
    for name, row in (("first", first), ("second", second)):
        def direct(event: PaymentStatusEvent, update: object, name: str = name) -> bool:
            handed[name].append((event, update))
            return True

        watch = await hub.watch(accounts=[row.source_account_id])
        watch.direct = direct
        waiting.append(await _parked(watch))
    events = [PaymentStatusEvent.of(row, *sample_accounts(row), with_accounts=False)
              for row in (first, unwatched, second)]
    await hub.apply(events)

    # One call for the batch, with only the events a direct watch is waiting for, in order.
    assert [[e.payment_id for e in batch] for batch in calls] == [[first.id, second.id]]
    assert [(e.payment_id, u) for e, u in handed["first"]] == [(first.id, f"update of {first.id}")]
    assert [(e.payment_id, u) for e, u in handed["second"]] == [
        (second.id, f"update of {second.id}")]
    assert not any(task.done() for task in waiting)  # sent directly, nothing queued
    for task in waiting:
        task.cancel()
