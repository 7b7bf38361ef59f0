"""Query limits checked before execution: tokens while parsing; depth, aliases and an estimated
cost in one validation pass. Each refusal is QUERY_TOO_COMPLEX.

Strawberry's own limiters report plain validation errors (which we would show as
BAD_USER_INPUT) and build a new rule class per request, which defeats the validation cache; the
rule here is one class per schema, so a repeated document is validated once.

The cost estimate counts every selected field once per object it may be resolved on: a field
with a ``first`` argument multiplies the fields below it by that page size (capped by
``max_page_size``, as the resolvers cap it; a variable counts as the cap, since the validation
result is cached per document, not per variable values). A page narrowed by a ``filter``
(``payments``) or a date range (``Account.entries``) counts its page size once more. Below
``createPayments`` the first page counts once per input the batch may have
(``max_bulk_payments``): it runs for each of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
    get_named_type,
    parse,
)
from graphql.type import GraphQLInterfaceType, GraphQLNamedType, GraphQLObjectType
from strawberry.extensions import SchemaExtension

from ..config import LimitsSettings
from ..domain.errors import QueryTooComplex

_TOKEN_LIMIT_MESSAGE = "tokens. Parsing aborted."
# graphql-core 3.3's parser stops at a fixed nesting (of selections or of list and object
# values) before Python's recursion limit; too deep for any depth limit of ours.
_NESTING_LIMIT_MESSAGE = "Document is nested too deeply. Parsing aborted."


def token_limit_error(error: GraphQLError) -> QueryTooComplex | None:
    """The QUERY_TOO_COMPLEX error for graphql-core's "more than N tokens" and "nested too
    deeply" syntax errors (both refuse the document before it is parsed whole)."""
    if error.message.endswith(_TOKEN_LIMIT_MESSAGE):
        return QueryTooComplex(
            "the query has too many tokens", extensions={"limit": "tokens"}
        )
    if error.message.endswith(_NESTING_LIMIT_MESSAGE):
        return QueryTooComplex("the query is nested too deeply", extensions={"limit": "depth"})
    return None


@cache
def cached_parser(maxsize: int) -> Callable[..., DocumentNode]:
    """An LRU-cached ``parse``, one per size: the schema and the gateway (which reads the
    operation type for rate limits) share it, so a document is parsed once."""
    return lru_cache(maxsize=maxsize)(parse)


class CachedParse(SchemaExtension):
    """Parses through the schema's LRU cache with the token limit.

    A document that fails to parse is left unparsed: Strawberry then parses it again inside
    its own error handling, so the syntax error becomes a normal result that ErrorCodes shapes
    (an exception from this hook would escape every extension).
    """

    def __init__(self, parse_cached: Callable[..., DocumentNode], max_tokens: int) -> None:
        self._parse = parse_cached
        self._max_tokens = max_tokens

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self._max_tokens
        if context.query is not None and context.graphql_document is None:
            try:
                context.graphql_document = self._parse(context.query, max_tokens=self._max_tokens)
            except GraphQLError:
                pass
        yield


class ReachedExecution(SchemaExtension):
    """Records on the request's context each query text that reached execution, that is
    parsed within the token limit and passed validation with the depth, alias and cost
    limits (Strawberry executes nothing else). The gateway registers persisted queries
    only from that record."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        executed = getattr(context.context, "executed", None)
        if isinstance(executed, set) and context.query is not None:
            executed.add(context.query)
        yield


@dataclass
class _Measure:
    depth: int = 0
    aliases: int = 0
    cost: int = 0


class _Walker:
    """Walks one operation with its fragments expanded, stopping early once past a limit
    (so a document of fragments spread exponentially costs us at most the limit)."""

    def __init__(self, schema: GraphQLSchema, limits: LimitsSettings,
                 fragments: dict[str, FragmentDefinitionNode]) -> None:
        self.schema = schema
        self.limits = limits
        self.fragments = fragments
        self.measure = _Measure()

    def over(self) -> bool:
        m, lim = self.measure, self.limits
        return (m.depth > lim.max_query_depth or m.aliases > lim.max_aliases
                or m.cost > lim.max_query_cost)

    def walk(self, selections: SelectionSetNode | None, parent: GraphQLNamedType | None,
             depth: int, multiplier: int, active: frozenset[str], per_input: int = 1) -> None:
        if selections is None:
            return
        for selection in selections.selections:
            if self.over():
                return
            if isinstance(selection, FieldNode):
                self._field(selection, parent, depth, multiplier, active, per_input)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition else parent
                self.walk(selection.selection_set, target, depth, multiplier, active, per_input)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in active:  # unknown or cyclic: other rules report
                    continue
                target = self.schema.get_type(fragment.type_condition.name.value)
                self.walk(fragment.selection_set, target, depth, multiplier, active | {name},
                          per_input)

    def _field(self, node: FieldNode, parent: GraphQLNamedType | None, depth: int,
               multiplier: int, active: frozenset[str], per_input: int = 1) -> None:
        name = node.name.value
        if name.startswith("__"):  # introspection: dev only, and cheap
            return
        if name == BULK_FIELD and parent is self.schema.mutation_type:
            # Its answer's fields count once (the batch's size is a variable, and the rate
            # limit bills it), but a page below it runs once per input: the first page
            # under it counts the whole batch's pages.
            per_input = self.limits.max_bulk_payments
        m = self.measure
        m.depth = max(m.depth, depth + 1)
        m.aliases += int(node.alias is not None)
        m.cost += multiplier
        field_type = None
        if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
            field_def = parent.fields.get(name)
            if field_def is not None:
                field_type = get_named_type(field_def.type)
                # `first` pages; `last` (Account.recentEvents) bounds a list the same way.
                size = "first" if "first" in field_def.args else "last"
                bound = field_def.args.get(size)
                page = self._page_size(node, bound, size)
                if bound is not None:
                    page, per_input = page * per_input, 1
                if _narrowed(node):
                    # A filtered page (or a statement's date range) may read index rows it
                    # then drops: it counts its page once more.
                    m.cost += multiplier * page
                multiplier *= page
        self.walk(node.selection_set, field_type, depth + 1, multiplier, active, per_input)

    def _page_size(self, node: FieldNode, first_arg: Any, name: str = "first") -> int:
        if first_arg is None:
            return 1
        cap = self.limits.max_page_size
        for argument in node.arguments or ():
            if argument.name.value == name:
                if isinstance(argument.value, IntValueNode):
                    return max(0, min(int(argument.value.value), cap))
                if isinstance(argument.value, VariableNode):
                    return cap
                return 1  # a wrong literal type: validation refuses it anyway
        default = first_arg.default_value
        return min(default, cap) if isinstance(default, int) else cap


BULK_FIELD = "createPayments"
_NARROWING_ARGUMENTS = frozenset({"filter", "from", "to"})


def _narrowed(node: FieldNode) -> bool:
    return any(a.name.value in _NARROWING_ARGUMENTS for a in node.arguments or ())


def query_limits_rule(limits: LimitsSettings) -> type[ValidationRule]:
    """The validation rule enforcing depth, alias and cost limits from ``limits``."""

    class QueryLimitsRule(ValidationRule):
        # How many documents were validated (not served from the validation cache).
        validated = 0

        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            type(self).validated += 1
            self.fragments = {
                d.name.value: d for d in context.document.definitions
                if isinstance(d, FragmentDefinitionNode)
            }

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: object) -> None:
            schema = self.context.schema
            walker = _Walker(schema, limits, self.fragments)
            walker.walk(node.selection_set, schema.get_root_type(node.operation), 0, 1,
                        frozenset())
            m = walker.measure
            for limit, actual, allowed in (
                ("depth", m.depth, limits.max_query_depth),
                ("aliases", m.aliases, limits.max_aliases),
                ("cost", m.cost, limits.max_query_cost),
            ):
                if actual > allowed:
                    message = f"query {limit} exceeds the limit of {allowed}"
                    error = QueryTooComplex(message, extensions={"limit": limit, "max": allowed})
                    self.report_error(GraphQLError(message, node, original_error=error))
                    return

    return QueryLimitsRule
