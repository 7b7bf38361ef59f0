"""A list a resolver answers with, completed without graphql-core's per-item execution.

graphql-core completes a list of objects item by item: for each item and each selected field
it builds a resolve info and a path, calls the field's resolver, checks for an awaitable and
completes the value. A createPayments answer is 1,000 items of two objects each, and that
completion was about a tenth of the API's CPU under bulk load (docs/benchmarks.md). Yet for
the selections its callers make (``payment { id status ... } error { code message }``) every
value is a plain function of the item.

So a resolver may return a :class:`Completable` list, and when the selection below it is
simple enough, the executor completes it with a plan compiled once for the request from the
selection: for each response key, the field's own function and its type's output coercion,
exactly the calls graphql-core would make, without the bookkeeping. A selection is simple
when it names only fields (no fragments, no directives, no arguments, no response key twice)
whose resolvers are plain: Strawberry's attribute read, or a method taking only ``self``
(resolvers/direct.py). Anything else (a nested account, refunds, an aliased fragment),
and any value that is not ready (an awaitable) or does not complete (an exception, a null
where none may be), completes the whole list graphql-core's way instead, errors and all: the
plain functions are pure, so calling them twice changes nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from graphql import (
    FieldNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    SelectionSetNode,
    is_leaf_type,
)
from graphql.execution.collect_fields import FieldDetails
from graphql.pyutils import Path, Undefined
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from ..schema.sharing import SharedEventExecutor
from .direct import method_of

Complete = Callable[[Any], Any]


class Completable(list[Any]):
    """A resolver's answer that the executor may complete by a plan (see the module)."""

    __slots__ = ()


class _Declined(Exception):
    """This list completes graphql-core's way."""


class PaystreamExecutor(SharedEventExecutor):
    """The schema's executor: shared subscription results (schema/sharing.py), and
    :class:`Completable` lists completed by plan."""

    def complete_value(self, return_type: GraphQLOutputType,
                       field_details_list: list[FieldDetails], info: GraphQLResolveInfo[Any],
                       path: Path, result: Any, position_context: Any) -> Any:
        middleware = self.middleware_manager
        if type(result) is Completable and (middleware is None or not middleware.middlewares):
            complete = plan(return_type, [d.node for d in field_details_list])
            if complete is not None:
                # Whatever does not complete plainly, graphql-core's way reports, located.
                with suppress(Exception):
                    return complete(result)
        return super().complete_value(return_type, field_details_list, info, path, result,
                                      position_context)


def plan(return_type: GraphQLOutputType, nodes: list[FieldNode]) -> Complete | None:
    """How to complete a value of ``return_type`` selected by ``nodes``, or None when some
    part of it needs graphql-core. The function raises :class:`_Declined` when a value does
    not complete plainly."""
    if len(nodes) != 1 or nodes[0].directives:
        return None
    return _of_type(return_type, nodes[0].selection_set)


def _of_type(type_: GraphQLOutputType, selection: SelectionSetNode | None) -> Complete | None:
    if isinstance(type_, GraphQLNonNull):
        inner = _of_type(type_.of_type, selection)
        if inner is None:
            return None
        return lambda value: _declined() if value is None else inner(value)
    if isinstance(type_, GraphQLList):
        item = _of_type(type_.of_type, selection)
        if item is None:
            return None
        return lambda value: None if value is None else [item(v) for v in _listed(value)]
    if is_leaf_type(type_):
        if selection is not None:
            return None
        coerce = type_.coerce_output_value
        return lambda value: None if value is None else _coerced(coerce(value))
    if isinstance(type_, GraphQLObjectType) and selection is not None \
            and type_.is_type_of is None:
        return _of_object(type_, selection)
    return None  # interfaces and unions: their runtime type is graphql-core's to resolve


def _of_object(type_: GraphQLObjectType, selection: SelectionSetNode) -> Complete | None:
    fields: list[tuple[str, Callable[[Any], Any], Complete | None]] = []
    for node in selection.selections:
        if not isinstance(node, FieldNode) or node.directives or node.arguments:
            return None
        key = node.alias.value if node.alias else node.name.value
        if any(key == known for known, _, _ in fields):
            return None  # merged by graphql-core: its rules, not ours
        name = node.name.value
        if name == "__typename":
            fields.append((key, _constant(type_.name), None))
            continue
        graphql_field = type_.fields.get(name)
        if graphql_field is None:
            return None
        read = _reader(graphql_field.resolve, graphql_field.extensions)
        complete = _of_type(graphql_field.type, node.selection_set)
        if read is None or complete is None:
            return None
        fields.append((key, read, complete))

    def complete_object(value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        answer = {}
        for key, read, complete in fields:
            field_value = read(value)
            if inspect.isawaitable(field_value):
                if inspect.iscoroutine(field_value):
                    field_value.close()
                raise _Declined
            answer[key] = field_value if complete is None else complete(field_value)
        return answer
    return complete_object


def _reader(resolve: Any, extensions: Any) -> Callable[[Any], Any] | None:
    """The field's value of a parent, when its resolver is plain; None otherwise."""
    method = method_of(resolve)
    if method is not None:
        return method
    field = (extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if getattr(resolve, "_is_default", False) and isinstance(field, StrawberryField) \
            and field.is_basic_field:
        default, name = field.default_resolver, field.python_name
        return lambda source: default(source, name)
    return None


def _constant(value: str) -> Callable[[Any], str]:
    return lambda _: value


def _listed(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Declined
    return value


def _coerced(value: Any) -> Any:
    if value is Undefined or value is None:
        raise _Declined
    return value


def _declined() -> Any:
    raise _Declined
