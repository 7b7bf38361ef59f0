"""How many payments a mutation creates in bulk, read from the document and its variables
before execution: the gateway bills the rate limit by it and refuses a batch past
``max_bulk_payments`` before a token is taken."""

from __future__ import annotations

from collections.abc import Mapping

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    ListValueNode,
    NullValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

from ..schema.limits import BULK_FIELD

BULK_ARGUMENT = "inputs"


def bulk_size(document: DocumentNode, operation: OperationDefinitionNode,
              variables: Mapping[str, object]) -> int:
    """The inputs of every ``createPayments`` at the operation's root (aliases and fragments
    included). A single object where the list is expected counts one, as GraphQL's input
    coercion makes it a list of one; anything else invalid counts nothing (validation
    refuses it)."""
    fragments = {d.name.value: d for d in document.definitions
                 if isinstance(d, FragmentDefinitionNode)}
    return _walk(operation.selection_set, fragments, variables, frozenset())


def _walk(selections: SelectionSetNode | None, fragments: Mapping[str, FragmentDefinitionNode],
          variables: Mapping[str, object], active: frozenset[str]) -> int:
    if selections is None:
        return 0
    total = 0
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value == BULK_FIELD:
                total += _inputs(selection, variables)
        elif isinstance(selection, InlineFragmentNode):
            total += _walk(selection.selection_set, fragments, variables, active)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is not None and name not in active:  # cycles: validation reports
                total += _walk(fragment.selection_set, fragments, variables, active | {name})
    return total


def _inputs(field: FieldNode, variables: Mapping[str, object]) -> int:
    for argument in field.arguments or ():
        if argument.name.value != BULK_ARGUMENT:
            continue
        value = argument.value
        if isinstance(value, VariableNode):
            given = variables.get(value.name.value)
            if isinstance(given, list):
                return len(given)
            return 0 if given is None else 1
        if isinstance(value, ListValueNode):
            return len(value.values)
        return 0 if isinstance(value, NullValueNode) else 1
    return 0
