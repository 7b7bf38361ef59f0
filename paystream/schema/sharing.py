"""Subscription events executed once per audience, not once per subscriber.

Every subscriber of an account (or a payment) is sent the same update object for one status
event. Executing the subscription's selection set on it is most of what fanning out costs, and
its result depends only on the update, the document, the variables and who is asking (a
balance is shown to its owner only). So the first subscriber's execution is kept on the
update, under those, and every later subscriber with the same document, variables, partner
and scopes gets that result instead of executing again.

The update carries the memo (``Payment.executions``), so it lives exactly as long as some
subscriber still holds the update: no global cache, nothing to evict.
"""

from __future__ import annotations

import asyncio
from typing import Any

from graphql import ExecutionResult, OperationType
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from ..cache.singleflight import joined, shared_task
from ..metrics import SUBSCRIPTION_UPDATES

_EXECUTED = SUBSCRIPTION_UPDATES.labels("executed")
_SHARED = SUBSCRIPTION_UPDATES.labels("shared")


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor; a subscription event whose root carries an ``executions`` memo
    is executed at most once per (document, variables, partner, scopes)."""

    def execute_operation(self, serially: bool | None = None) -> Any:
        memo = getattr(self.root_value, "executions", None)
        key = self._audience() if isinstance(memo, dict) else None
        if key is None:
            return super().execute_operation(serially)
        assert isinstance(memo, dict)
        shared = memo.get(key)
        if shared is not None:
            _SHARED.inc()
        else:
            _EXECUTED.inc()
            result = super().execute_operation(serially)
            if not self.is_awaitable(result):
                # The operation node rides along so its id() cannot be reused while kept.
                memo[key] = (self.operation, result)
                return result
            operation = self.operation
            return joined(shared_task(memo, key, result, lambda task: (operation, task)))
        outcome: ExecutionResult | asyncio.Future[ExecutionResult] = shared[1]
        return joined(outcome) if isinstance(outcome, asyncio.Future) else outcome

    def _audience(self) -> tuple[object, ...] | None:
        """What the result may depend on besides the event; None when it cannot be shared."""
        if self.operation.operation is not OperationType.SUBSCRIPTION:
            return None
        caller = getattr(self.context_value, "caller", None)
        if caller is None:
            return None
        try:
            variables = frozenset(self.variable_values.coerced.items())
            hash(variables)
        except TypeError:
            return None  # a list or object argument: not worth freezing
        return (id(self.operation), variables, caller.partner_id, caller.scopes)
