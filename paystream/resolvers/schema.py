"""The Strawberry schema: the root types with the extensions of ``paystream.schema``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import strawberry
from graphql import GraphQLError
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import AddValidationRules, ValidationCache
from strawberry.schema.config import BatchingConfig, StrawberryConfig
from strawberry.types.graphql import OperationType

from ..config import Settings
from ..schema.errors import ErrorCodes
from ..schema.limits import CachedParse, ReachedExecution, cached_parser, query_limits_rule
from ..schema.scalars import SCALAR_MAP
from .completion import PaystreamExecutor
from .direct import resolve_plain_fields_directly
from .mutation import Mutation
from .query import Query
from .subscription import Subscription

# Fields whose arguments are converted without Strawberry's per-value work (resolvers/direct.py):
# createPayments takes up to 1,000 input objects a request; createPayment is the hottest
# mutation (its input's conversion was a fortieth of the API's CPU at 200 payments/s).
DIRECT_WITH_ARGUMENTS = frozenset({"Mutation.createPayment", "Mutation.createPayments"})


class PaystreamSchema(strawberry.Schema):
    """Strawberry's schema; error logging is left to :class:`ErrorCodes`, which logs only the
    unexpected errors (a client's bad input is not a server error)."""

    def process_errors(self, errors: list[GraphQLError], execution_context: object = None) -> None:
        return None

    async def stream(
        self, query: str | None, variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None, root_value: Any | None = None,
        operation_name: str | None = None, operation_extensions: dict[str, Any] | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
    ) -> Any:
        """Streaming transports (the websocket) carry subscriptions only. Strawberry would run
        queries and mutations there too, past the HTTP gateway: its rate limits, admission
        control, persisted queries and metrics. They are refused; HTTP serves them."""
        return await super().stream(
            query, variable_values, context_value, root_value, operation_name,
            operation_extensions, allowed_operation_types=(OperationType.SUBSCRIPTION,),
        )


def build_schema(settings: Settings) -> PaystreamSchema:
    """The schema with limits from settings; introspection only in dev mode."""
    limits = settings.limits
    # Factories, not instances: each request gets fresh extension state. The caches are
    # shared across requests, with explicit sizes (Strawberry's defaults changed between
    # releases). The rule classes are made once here: the validation cache is keyed by them.
    parse = cached_parser(limits.parser_cache_size)
    rules: list[type[ASTValidationRule]] = [query_limits_rule(limits)]
    if not settings.dev:
        rules.append(NoSchemaIntrospectionCustomRule)
    extensions: list[object] = [
        ErrorCodes,
        lambda: CachedParse(parse, limits.max_tokens),
        lambda: AddValidationRules(rules),
        lambda: ValidationCache(maxsize=limits.validation_cache_size),
        ReachedExecution,
    ]
    batching: BatchingConfig = {"max_operations": limits.max_batch_operations}
    schema = PaystreamSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,  # type: ignore[arg-type]  # Strawberry types this list invariantly
        execution_context_class=PaystreamExecutor,
        config=StrawberryConfig(
            auto_camel_case=True, scalar_map=SCALAR_MAP,
            batching_config=batching if limits.max_batch_operations > 1 else None,
        ),
    )
    resolve_plain_fields_directly(schema, with_arguments=DIRECT_WITH_ARGUMENTS)
    return schema
