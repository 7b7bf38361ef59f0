"""Subscription events executed and encoded once per audience, not once per subscriber.

Every subscriber of an account (or a payment) is sent the same update object for one status
event. Executing the subscription's selection set on it is most of what fanning out costs, and
its result depends only on the update, the document, the variables and who is asking (a
balance is shown to its owner only). So the first subscriber's execution is kept on the
update, under those, and every later subscriber with the same document, variables, partner
and scopes gets that result instead of executing again.

The payload is encoded once too. A websocket transport that can write frames itself, below
Strawberry's per-subscriber handling, gives each subscription operation an
:class:`OperationFrames` in the operation's task (:data:`OPERATION_FRAMES`), and the executor
graphql-core builds for the subscription records itself on it. A live update then goes to
:func:`direct_payload` instead of through Strawberry: the audience's result comes from the
memo (executed by the first of them), its payload is encoded to JSON once and kept with it,
and each subscriber's frame is that payload with its own operation id and message type around
it. A result with errors does not go this way (each subscriber's errors carry its own request
id), nor one that is not ready yet (a selection that needs a read): Strawberry sends those.

The update carries the memo (``Payment.executions``), so it lives exactly as long as some
subscriber still holds the update: no global cache, nothing to evict.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, cast

from graphql import ExecutionResult, OperationDefinitionNode, OperationType
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from ..cache.singleflight import joined, shared_task
from ..metrics import SUBSCRIPTION_PAYLOADS, SUBSCRIPTION_UPDATES

_EXECUTED = SUBSCRIPTION_UPDATES.labels("executed")
_SHARED = SUBSCRIPTION_UPDATES.labels("shared")
_ENCODED = SUBSCRIPTION_PAYLOADS.labels("encoded")
_REUSED = SUBSCRIPTION_PAYLOADS.labels("shared")


class SharedResult:
    """One audience's execution of one update, and its payload once encoded."""

    __slots__ = ("operation", "outcome", "payload")

    def __init__(self, operation: OperationDefinitionNode,
                 outcome: ExecutionResult | asyncio.Future[ExecutionResult]) -> None:
        # The operation node rides along so its id() (in the key) cannot be reused while kept.
        self.operation = operation
        self.outcome = outcome
        self.payload: bytes | None = None

    def result(self) -> ExecutionResult | None:
        """The result, if it is in and succeeded."""
        outcome = self.outcome
        if not isinstance(outcome, asyncio.Future):
            return outcome
        if outcome.done() and not outcome.cancelled() and outcome.exception() is None:
            return outcome.result()
        return None


class OperationFrames:
    """A subscription operation's way to its socket below Strawberry's handler, made by the
    websocket transport (the gateway) for each operation it runs."""

    __slots__ = ("executor", "group")

    def __init__(self) -> None:
        # The subscription's graphql-core executor (set by SharedEventExecutor.build).
        self.executor: SharedEventExecutor | None = None
        # What the frames are written to (a socket): operations of one group are best
        # handed an update one after another.
        self.group: object = self

    def ready(self) -> bool:
        """Whether a frame written now goes out in order without waiting."""
        return False

    def write(self, payload: bytes) -> None:
        """Write the operation's frame for ``payload`` (the encoded ``{"data": ...}``)."""
        raise NotImplementedError


# The operation's frames, in the context of the task that runs the operation.
OPERATION_FRAMES: ContextVar[OperationFrames | None] = ContextVar(
    "paystream.operation_frames", default=None)


def encode_payload(result: ExecutionResult) -> bytes:
    """``{"data": ...}`` as Strawberry's view encodes a message (compact JSON)."""
    return json.dumps({"data": result.data}, separators=(",", ":")).encode()


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor; a subscription event whose root carries an ``executions`` memo
    is executed at most once per (document, variables, partner, scopes)."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        """graphql-core's constructor; a subscription's executor is also recorded on the
        operation's frames, so that updates can be executed for it outside its stream."""
        executor = super().build(*args, **kwargs)
        frames = OPERATION_FRAMES.get()
        if (frames is not None and frames.executor is None and isinstance(executor, cls)
                and executor.operation.operation is OperationType.SUBSCRIPTION):
            frames.executor = executor
        return executor

    def execute_operation(self, serially: bool | None = None) -> Any:
        memo = getattr(self.root_value, "executions", None)
        key = self.audience() if isinstance(memo, dict) else None
        if key is None:
            return super().execute_operation(serially)
        assert isinstance(memo, dict)
        shared = memo.get(key)
        if shared is not None:
            _SHARED.inc()
            outcome = shared.outcome
            return joined(outcome) if isinstance(outcome, asyncio.Future) else outcome
        _EXECUTED.inc()
        planned = self.planned_event(self.root_value)
        if planned is not None:
            memo[key] = SharedResult(self.operation, planned)
            return planned
        result = super().execute_operation(serially)
        if not self.is_awaitable(result):
            # A subscription event's result (no incremental delivery for subscriptions).
            memo[key] = SharedResult(self.operation, cast(ExecutionResult, result))
            return result
        operation = self.operation
        return joined(shared_task(memo, key, result, lambda task: SharedResult(operation, task)))

    def planned_event(self, event: object) -> ExecutionResult | None:
        """The subscription's result for ``event`` without graphql-core's execution, when the
        schema's executor can tell it (resolvers/completion.py); None: execute it."""
        return None

    # The last caller asked about and its audience: asked for every update sent directly.
    _audience_of: tuple[object, tuple[object, ...] | None] | None = None

    def audience(self) -> tuple[object, ...] | None:
        """What the result may depend on besides the event; None when it cannot be shared."""
        caller = getattr(self.context_value, "caller", None)
        known = self._audience_of
        if known is not None and known[0] is caller:
            return known[1]
        key = self._audience_for(caller)
        self._audience_of = (caller, key)
        return key

    def _audience_for(self, caller: Any) -> tuple[object, ...] | None:
        if self.operation.operation is not OperationType.SUBSCRIPTION or caller is None:
            return None
        try:
            variables = frozenset(self.variable_values.coerced.items())
            hash(variables)
        except TypeError:
            return None  # a list or object argument: not worth freezing
        return (id(self.operation), variables, caller.partner_id, caller.scopes)


def direct_payload(frames: OperationFrames, root: object,
                   before_execution: Callable[[], None]) -> bytes | None:
    """The encoded payload of the subscription's frame for ``root`` (an update carrying an
    ``executions`` memo): executed and encoded at most once per audience, whoever asks first.
    None when the update must take Strawberry's path: no executor recorded, nothing to share,
    a result with errors, or one that needs a read first (then it is started, for the
    subscriber's own stream to await)."""
    executor = frames.executor
    memo = getattr(root, "executions", None)
    if executor is None or not isinstance(memo, dict):
        return None
    key = executor.audience()
    if key is None:
        return None
    shared: SharedResult | None = memo.get(key)
    if shared is None:
        before_execution()
        planned = executor.planned_event(root)
        if planned is not None:
            _EXECUTED.inc()
            shared = memo[key] = SharedResult(executor.operation, planned)
            return _encoded(shared)
        outcome = executor.build_per_event_executor(root).execute_operation(False)
        if isinstance(outcome, asyncio.Future):
            outcome.cancel()  # only this wait: the shared task goes on, in the memo
        shared = memo.get(key)
        if shared is None:
            return None
    else:
        _SHARED.inc()
    return _encoded(shared)


def _encoded(shared: SharedResult) -> bytes | None:
    """The shared result's payload, encoded on first use; None for one not to send directly."""
    if shared.payload is None:
        result = shared.result()
        if result is None or result.errors or result.extensions:
            return None
        shared.payload = encode_payload(result)
        _ENCODED.inc()
    else:
        _REUSED.inc()
    return shared.payload
