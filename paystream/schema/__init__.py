"""The Strawberry schema and its extensions."""

from __future__ import annotations

import strawberry
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule

from ..config import Settings
from ..resolvers.mutation import Mutation
from ..resolvers.query import Query
from ..resolvers.subscription import Subscription
from .errors import ErrorCodes
from .scalars import SCALAR_MAP


class PaystreamSchema(strawberry.Schema):
    """Strawberry's schema; error logging is left to :class:`ErrorCodes`, which logs only the
    unexpected errors (a client's bad input is not a server error)."""

    def process_errors(self, errors: list[GraphQLError], execution_context: object = None) -> None:
        return None


def build_schema(settings: Settings) -> PaystreamSchema:
    """The schema with limits from settings; introspection only in dev mode."""
    limits = settings.limits
    # Factories, not instances: each request gets fresh extension state. The parse and
    # validation caches live at module level in Strawberry, shared across requests; their
    # sizes are explicit because Strawberry's defaults changed between releases.
    extensions: list[object] = [
        ErrorCodes,
        lambda: MaxTokensLimiter(max_token_count=limits.max_tokens),
        lambda: ParserCache(maxsize=limits.parser_cache_size),
        lambda: ValidationCache(maxsize=limits.validation_cache_size),
        lambda: QueryDepthLimiter(max_depth=limits.max_query_depth),
        lambda: MaxAliasesLimiter(max_alias_count=limits.max_aliases),
    ]
    if not settings.dev:
        extensions.append(lambda: AddValidationRules([NoSchemaIntrospectionCustomRule]))
    return PaystreamSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,  # type: ignore[arg-type]
        config=StrawberryConfig(auto_camel_case=True, scalar_map=SCALAR_MAP),
    )
