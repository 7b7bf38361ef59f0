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
whose resolvers are plain: Strawberry's attribute read, or a method taking only ``self``, or
``self`` and an ``Info`` (resolvers/direct.py; the ``Info`` is built once per selected field
of a completion, not per item, as the resolvers read only its context). Anything else
(refunds, an aliased fragment), and any value that is not ready (an awaitable: an account not
carried with its payment) or does not complete (an exception, such as a balance a write-only
key may not read; a null where none may be), completes the whole list graphql-core's way
instead, errors and all: the plain functions are pure, so calling them twice changes nothing.

A subscription event is completed the same way (:meth:`PaystreamExecutor.planned_event`):
each one executes the subscription's selection on one payment with both its accounts, and
that execution was a tenth of the API's CPU at 200 payments/s, for the same reasons.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from types import GeneratorType
from typing import Any

from graphql import (
    ExecutionResult,
    FieldNode,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    OperationType,
    SelectionSetNode,
    is_leaf_type,
)
from graphql.execution.collect_fields import FieldDetails
from graphql.pyutils import Path, Undefined
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from ..schema.sharing import SharedEventExecutor
from .direct import info_method_of, method_of

Complete = Callable[[Any, "_Infos"], Any]


class Completable(list[Any]):
    """A resolver's answer that the executor may complete by a plan (see the module)."""

    __slots__ = ()


class _Declined(Exception):
    """This list completes graphql-core's way."""


class PaystreamExecutor(SharedEventExecutor):
    """The schema's executor: shared subscription results (schema/sharing.py), and
    :class:`Completable` lists and subscription events completed by plan."""

    # The subscription's root response key and the plan for its event, once compiled (None:
    # no plan); built for the executor of each subscription operation.
    _event_plan: tuple[str, Complete] | None | bool = False

    def complete_value(self, return_type: GraphQLOutputType,
                       field_details_list: list[FieldDetails], info: GraphQLResolveInfo[Any],
                       path: Path, result: Any, position_context: Any) -> Any:
        middleware = self.middleware_manager
        if type(result) is Completable and (middleware is None or not middleware.middlewares):
            complete = plan(return_type, [d.node for d in field_details_list])
            if complete is not None:
                # Whatever does not complete plainly, graphql-core's way reports, located.
                with suppress(Exception):
                    return complete(result, _Infos(self, info.root_value))
        return super().complete_value(return_type, field_details_list, info, path, result,
                                      position_context)

    def planned_event(self, event: Any) -> ExecutionResult | None:
        """The subscription's result for ``event``, completed by plan; None when the selection
        or the event needs graphql-core (then nothing was sent or changed)."""
        found = self._event_plan
        if found is False:
            found = self._event_plan = _kept_event_plan(self)
        if found is None or self.middleware_manager is not None \
                and self.middleware_manager.middlewares:
            return None
        key, complete = found  # type: ignore[misc]  # a plan, not False, by now
        try:
            data = {key: complete(event, _Infos(self, event))}
        except Exception:  # noqa: BLE001 (graphql-core's execution reports it, located)
            return None
        return ExecutionResult(data, None)


# Event plans by (schema, operation), both kept with the plan so their ids are not reused:
# the executor an event is executed by is often a per-event copy (graphql-core's
# build_per_event_executor), and a plan depends on the document only, not on the caller.
_EVENT_PLANS: OrderedDict[tuple[int, int], tuple[object, object,
                                                 tuple[str, Complete] | None]] = OrderedDict()
_MAX_EVENT_PLANS = 1_024


def _kept_event_plan(executor: Any) -> tuple[str, Complete] | None:
    key = (id(executor.schema), id(executor.operation))
    kept = _EVENT_PLANS.get(key)
    if kept is not None and kept[0] is executor.schema and kept[1] is executor.operation:
        _EVENT_PLANS.move_to_end(key)
        return kept[2]
    found = event_plan(executor)
    _EVENT_PLANS[key] = (executor.schema, executor.operation, found)
    while len(_EVENT_PLANS) > _MAX_EVENT_PLANS:
        _EVENT_PLANS.popitem(last=False)
    return found


def event_plan(executor: Any) -> tuple[str, Complete] | None:
    """For a subscription operation of one root field (no directives, no fragment): its
    response key and the plan for its events. Strawberry resolves a subscription field's
    event to the event itself, so the plan completes the event with the field's type."""
    operation = executor.operation
    if operation.operation is not OperationType.SUBSCRIPTION or operation.directives:
        return None
    selections = operation.selection_set.selections
    root_type = executor.schema.subscription_type
    if len(selections) != 1 or not isinstance(selections[0], FieldNode) or root_type is None:
        return None
    node = selections[0]
    graphql_field = root_type.fields.get(node.name.value)
    if node.directives or graphql_field is None or graphql_field.subscribe is None:
        return None
    complete = _of_type(graphql_field.type, node.selection_set)
    if complete is None:
        return None
    return (node.alias.value if node.alias else node.name.value), complete


class _InfoField:
    """A selected field whose method takes an ``Info``: what to build the info of."""

    __slots__ = ("field", "field_def", "info_class", "node", "parent_type", "path")

    def __init__(self, field: StrawberryField, field_def: GraphQLField, node: FieldNode,
                 parent_type: GraphQLObjectType, info_class: Callable[..., Any]) -> None:
        self.field, self.field_def, self.node = field, field_def, node
        self.parent_type, self.info_class = parent_type, info_class
        # The field's own path under its type: what a completion by plan reports (it reports
        # nothing: a field that fails is declined and graphql-core's execution locates it).
        self.path = Path(None, node.alias.value if node.alias else node.name.value,
                         parent_type.name)


class _Infos:
    """The ``Info`` of each field of one completion whose method takes one, built on first
    use from the executor completing (its schema, operation, variables and context) with the
    completion's root value (a subscription's event)."""

    __slots__ = ("_built", "_executor", "_root")

    def __init__(self, executor: Any, root: Any) -> None:
        self._executor, self._root = executor, root
        self._built: dict[_InfoField, Any] = {}

    def of(self, spec: _InfoField) -> Any:
        info = self._built.get(spec)
        if info is None:
            info = self._built[spec] = spec.info_class(_raw_info=self._raw(spec),
                                                       _field=spec.field)
        return info

    def _raw(self, spec: _InfoField) -> Any:
        # The executor's resolve info for the field is the same for every event but for the
        # root value: built once per executor, and per event only when the root differs.
        executor = self._executor
        templates: dict[_InfoField, Any] | None = executor.__dict__.get("_info_templates")
        if templates is None:
            templates = executor.__dict__["_info_templates"] = {}
        raw = templates.get(spec)
        if raw is None:
            raw = templates[spec] = executor.build_resolve_info(
                spec.field_def, [spec.node], spec.parent_type, spec.path)
        return raw if raw.root_value is self._root else raw._replace(root_value=self._root)


# Whether a value of a type may be awaitable (inspect.isawaitable's test, by type): asked for
# every field's value, and almost every one is a str, a Decimal or an object type.
_MAY_AWAIT: dict[type, bool] = {}


def _awaitable(value: Any) -> bool:
    kind = type(value)
    may = _MAY_AWAIT.get(kind)
    if may is None:
        may = _MAY_AWAIT[kind] = hasattr(kind, "__await__") or kind is GeneratorType
    return may and inspect.isawaitable(value)


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
        return lambda value, infos: _declined() if value is None else inner(value, infos)
    if isinstance(type_, GraphQLList):
        item = _of_type(type_.of_type, selection)
        if item is None:
            return None
        return lambda value, infos: None if value is None else [
            item(v, infos) for v in _listed(value)]
    if is_leaf_type(type_):
        if selection is not None:
            return None
        coerce = type_.coerce_output_value
        return lambda value, _: None if value is None else _coerced(coerce(value))
    if isinstance(type_, GraphQLObjectType) and selection is not None \
            and type_.is_type_of is None:
        return _of_object(type_, selection)
    return None  # interfaces and unions: their runtime type is graphql-core's to resolve


def _of_object(type_: GraphQLObjectType, selection: SelectionSetNode) -> Complete | None:
    fields: list[tuple[str, Read, Complete | None]] = []
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
        read = _reader(graphql_field, node, type_)
        complete = _of_type(graphql_field.type, node.selection_set)
        if read is None or complete is None:
            return None
        fields.append((key, read, complete))

    def complete_object(value: Any, infos: _Infos) -> dict[str, Any] | None:
        if value is None:
            return None
        answer = {}
        for key, read, complete in fields:
            field_value = read(value, infos)
            if _awaitable(field_value):
                if inspect.iscoroutine(field_value):
                    field_value.close()
                raise _Declined
            answer[key] = field_value if complete is None else complete(field_value, infos)
        return answer
    return complete_object


Read = Callable[[Any, _Infos], Any]


def _reader(graphql_field: GraphQLField, node: FieldNode,
            parent_type: GraphQLObjectType) -> Read | None:
    """The field's value of a parent, when its resolver is plain; None otherwise."""
    resolve = graphql_field.resolve
    method = method_of(resolve)
    if method is not None:
        return lambda source, _: method(source)
    with_info = info_method_of(resolve)
    if with_info is not None:
        info_method, strawberry_field, info_class = with_info
        spec = _InfoField(strawberry_field, graphql_field, node, parent_type, info_class)
        return lambda source, infos: info_method(source, infos.of(spec))
    field = (graphql_field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if getattr(resolve, "_is_default", False) and isinstance(field, StrawberryField) \
            and field.is_basic_field:
        default, name = field.default_resolver, field.python_name
        return lambda source, _: default(source, name)
    return None


def _constant(value: str) -> Read:
    return lambda _, __: value


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
