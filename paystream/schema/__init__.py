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
from graphql.validation import NoSchemaIntrospectionCustomRule

from ..config import Settings
from ..resolvers.mutation import Mutation
from ..resolvers.query import Query
from .errors import ErrorCodes


def build_schema(settings: Settings) -> strawberry.Schema:
    """The schema with limits from settings; introspection only in dev mode."""
    limits = settings.limits
    extensions: list[object] = [
        ErrorCodes,
        MaxTokensLimiter(max_token_count=limits.max_tokens),
        # Explicit sizes: Strawberry's defaults changed between releases.
        ParserCache(maxsize=limits.parser_cache_size),
        ValidationCache(maxsize=limits.validation_cache_size),
        QueryDepthLimiter(max_depth=limits.max_query_depth),
        MaxAliasesLimiter(max_alias_count=limits.max_aliases),
    ]
    if not settings.dev:
        extensions.append(AddValidationRules([NoSchemaIntrospectionCustomRule]))
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        extensions=extensions,  # type: ignore[arg-type]
        config=StrawberryConfig(auto_camel_case=True),
    )
