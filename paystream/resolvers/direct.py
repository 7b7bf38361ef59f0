"""Plain fields resolved straight from graphql-core, without Strawberry's per-field chain.

Strawberry calls every field that has a resolver method through the same chain: it builds an
``Info``, converts the (absent) arguments, folds the field extensions around the call and
checks for exception handlers. For a field whose method takes only ``self`` (or ``self`` and
``info``), has no arguments, no extensions (permissions are extensions) and no directives,
and is not async, that chain changes nothing: the answer is the method's, called on the
parent object. A 50-payment page with both accounts is about 600 such calls, and the chain
was about a sixth of the API's CPU under the nested list (docs/benchmarks.md). Here each such
field's graphql-core resolver is replaced by a direct call, with a Strawberry ``Info`` built
only for the methods that take one. Everything else (async fields, fields with arguments,
the root fields) keeps Strawberry's resolver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from graphql import GraphQLObjectType, GraphQLResolveInfo
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

Resolve = Callable[..., Any]


def resolve_plain_fields_directly(schema: strawberry.Schema) -> list[str]:
    """Replace the resolvers of the schema's plain fields (above); returns their names, as
    ``Type.field``."""
    replaced: list[str] = []
    info_class: Callable[..., Any] = schema.config.info_class
    root_types = {schema._schema.query_type, schema._schema.mutation_type,
                  schema._schema.subscription_type}
    for graphql_type in schema._schema.type_map.values():
        if (not isinstance(graphql_type, GraphQLObjectType) or graphql_type in root_types
                or graphql_type.name.startswith("__")):
            continue
        for name, graphql_field in graphql_type.fields.items():
            field = (graphql_field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
            resolve = _direct(field, info_class) if isinstance(field, StrawberryField) else None
            if resolve is not None:
                graphql_field.resolve = resolve
                replaced.append(f"{graphql_type.name}.{name}")
    return replaced


def _direct(field: StrawberryField, info_class: Callable[..., Any]) -> Resolve | None:
    resolver = field.base_resolver
    if (resolver is None or resolver.is_async or field.arguments or field.extensions
            or field.permission_classes or field.directives):
        return None
    parameters = list(resolver.signature.parameters.values())
    if not parameters or parameters[0] is not resolver.self_parameter:
        return None
    method = resolver.wrapped_func
    if isinstance(method, (classmethod, staticmethod)):
        return None
    if len(parameters) == 1:
        def of_source(source: Any, info: GraphQLResolveInfo[Any]) -> Any:
            return method(source)
        return of_source
    if len(parameters) == 2 and parameters[1] is resolver.info_parameter:
        def with_info(source: Any, info: GraphQLResolveInfo[Any]) -> Any:
            return method(source, info_class(_raw_info=info, _field=field))
        return with_info
    return None
