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

Fields named in ``with_arguments`` (createPayments: 1,000 input objects a request, whose
conversion by Strawberry re-resolved each item's field annotations and was a fifth of a bulk
request's CPU) are called directly too, async or not, with their arguments converted by
functions built once from the argument types, by Strawberry's rules (input objects built from
their GraphQL-named fields, a field without a default None when absent, null and unset kept,
scalars and enums as graphql-core gave them). A type those functions do not know (Maybe,
lazy types, GlobalID, custom input conversion) leaves the field to Strawberry.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING
from typing import Any, TypeVar

import strawberry
from graphql import GraphQLObjectType, GraphQLResolveInfo
from strawberry.relay import GlobalID
from strawberry.scalars import is_scalar
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.base import (
    StrawberryList,
    StrawberryMaybe,
    StrawberryOptional,
    has_object_definition,
)
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition
from strawberry.types.field import StrawberryField
from strawberry.types.fields.resolver import StrawberryResolver
from strawberry.types.unset import UNSET

Resolve = Callable[..., Any]
_T = TypeVar("_T")

# Each direct resolver that calls a method with ``self`` alone, and that method: the value of
# the field is the method's of the parent, with no resolve info (resolvers/completion.py).
_SOURCE_ONLY: weakref.WeakKeyDictionary[Resolve, Callable[[Any], Any]] = \
    weakref.WeakKeyDictionary()


# Each direct resolver that calls a method with ``self`` and a Strawberry ``Info``: the method,
# and its field and info class (what the ``Info`` is built of).
InfoMethod = tuple[Callable[[Any, Any], Any], StrawberryField, Callable[..., Any]]
_WITH_INFO: weakref.WeakKeyDictionary[Resolve, InfoMethod] = weakref.WeakKeyDictionary()


def method_of(resolve: object) -> Callable[[Any], Any] | None:
    """The method a direct resolver calls with the parent alone; None for any other
    resolver."""
    return _registered(_SOURCE_ONLY, resolve)


def info_method_of(resolve: object) -> InfoMethod | None:
    """The method a direct resolver calls with the parent and an ``Info``, the field it
    resolves and the ``Info`` class; None for any other resolver."""
    return _registered(_WITH_INFO, resolve)


def _registered(registry: weakref.WeakKeyDictionary[Resolve, _T], resolve: object) -> _T | None:
    if not callable(resolve):
        return None
    try:
        return registry.get(resolve)
    except TypeError:  # not weakly referenceable: not one of ours
        return None


def resolve_plain_fields_directly(schema: strawberry.Schema,
                                  with_arguments: Collection[str] = ()) -> list[str]:
    """Replace the resolvers of the schema's plain fields (above), and of the fields named in
    ``with_arguments`` (``Type.field``) where their argument types allow; returns the names
    of the fields replaced."""
    replaced: list[str] = []
    info_class: Callable[..., Any] = schema.config.info_class
    root_types = {schema._schema.query_type, schema._schema.mutation_type,
                  schema._schema.subscription_type}
    for graphql_type in schema._schema.type_map.values():
        if not isinstance(graphql_type, GraphQLObjectType) or graphql_type.name.startswith("__"):
            continue
        for name, graphql_field in graphql_type.fields.items():
            field = (graphql_field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
            if not isinstance(field, StrawberryField):
                continue
            qualified = f"{graphql_type.name}.{name}"
            if qualified in with_arguments:
                resolve = _with_arguments(schema, field, info_class)
            elif graphql_type not in root_types:
                resolve = _direct(field, info_class)
            else:
                resolve = None
            if resolve is not None:
                graphql_field.resolve = resolve
                replaced.append(qualified)
    return replaced


def _method(field: StrawberryField) -> tuple[StrawberryResolver[Any], Callable[..., Any],
                                              list[inspect.Parameter]] | None:
    """The field's resolver, its function and its parameters, when nothing of Strawberry's
    chain applies to it (no extensions, permissions or directives) and it is a method on the
    parent object; None otherwise."""
    resolver = field.base_resolver
    if resolver is None or field.extensions or field.permission_classes or field.directives:
        return None
    method = resolver.wrapped_func
    if isinstance(method, (classmethod, staticmethod)):
        return None
    parameters = list(resolver.signature.parameters.values())
    if not parameters or parameters[0] is not resolver.self_parameter:
        return None
    return resolver, method, parameters


def _direct(field: StrawberryField, info_class: Callable[..., Any]) -> Resolve | None:
    found = _method(field)
    if found is None or found[0].is_async or field.arguments:
        return None
    resolver, method, parameters = found
    if len(parameters) == 1:
        def of_source(source: Any, info: GraphQLResolveInfo[Any]) -> Any:
            return method(source)
        _SOURCE_ONLY[of_source] = method
        return of_source
    if len(parameters) == 2 and parameters[1] is resolver.info_parameter:
        def with_info(source: Any, info: GraphQLResolveInfo[Any]) -> Any:
            return method(source, info_class(_raw_info=info, _field=field))
        _WITH_INFO[with_info] = (method, field, info_class)
        return with_info
    return None


def _with_arguments(schema: strawberry.Schema, field: StrawberryField,
                    info_class: Callable[..., Any]) -> Resolve | None:
    found = _method(field)
    info_parameter = found[0].info_parameter if found is not None else None
    if found is None or info_parameter is None:
        return None
    _, method, _ = found
    names = schema.config.name_converter
    converters: list[tuple[str, str, Convert]] = []
    for argument in field.arguments:
        convert = _converter(schema, argument.type)
        if convert is None:
            return None
        converters.append((names.from_argument(argument), argument.python_name, convert))
    info_name = info_parameter.name

    def call(source: Any, info: GraphQLResolveInfo[Any], **given: Any) -> Any:
        kwargs = {python: convert(given[graphql]) for graphql, python, convert in converters
                  if graphql in given}
        kwargs[info_name] = info_class(_raw_info=info, _field=field)
        return method(source, **kwargs)

    return call


Convert = Callable[[Any], Any]


def _keep(value: Any) -> Any:
    return value


def _converter(schema: strawberry.Schema, type_: Any) -> Convert | None:
    """A function converting a GraphQL input value of ``type_`` as Strawberry's
    ``convert_argument`` does, for the types it handles; None for any other."""
    if isinstance(type_, StrawberryMaybe):
        return None
    if isinstance(type_, StrawberryOptional):
        return _converter(schema, type_.of_type)
    registry = schema.schema_converter.scalar_registry
    if type_ is GlobalID:
        return None
    if isinstance(type_, StrawberryList):
        item = _converter(schema, type_.of_type)
        if item is None:
            return None

        def each(value: Any) -> Any:
            # A new list whatever the items: graphql-core shares its defaults across requests.
            return value if value is None or value is UNSET else [item(v) for v in value]
        return each
    if is_scalar(type_, registry) or isinstance(type_, StrawberryEnumDefinition) \
            or has_enum_definition(type_):
        return _keep
    if not has_object_definition(type_):
        return None
    definition = type_.__strawberry_definition__
    if not definition.is_input or definition.from_input is not None:
        return None
    names = schema.config.name_converter
    fields: list[tuple[str, str, Convert]] = []
    absent: dict[str, None] = {}
    for input_field in definition.fields:
        convert = _converter(schema, input_field.resolve_type(type_definition=definition))
        if convert is None:
            return None
        fields.append((names.from_field(input_field), input_field.python_name, convert))
        if input_field.default_value is MISSING and input_field.default_factory is MISSING:
            absent[input_field.python_name] = None
    cls = type_

    def build(value: Mapping[str, Any]) -> Any:
        if value is None or value is UNSET:
            return value
        kwargs: dict[str, Any] = dict(absent)
        for graphql, python, convert in fields:
            if graphql in value:
                item = value[graphql]
                kwargs[python] = item if item is None or item is UNSET else convert(item)
        return cls(**kwargs)
    return build
