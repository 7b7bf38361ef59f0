"""The JSON body of an HTTP GraphQL request, checked before Strawberry reads it.

Strawberry catches only ``JSONDecodeError`` and assumes an object (or a list of them): invalid
UTF-8, nesting deeper than Python's recursion limit, or a body such as ``42``, ``null`` or
``[1]`` escaped as a 500. Each is a client error here, answered 400.
"""

from __future__ import annotations

import json
from typing import Any

from cross_web import HTTPException  # what Strawberry raises and turns into a response

_FIELDS: dict[str, tuple[type, ...]] = {
    "query": (str, type(None)),
    "variables": (dict, type(None)),
    "operationName": (str, type(None)),
    "extensions": (dict, type(None)),
}


def _check_operation(item: object) -> None:
    if not isinstance(item, dict):
        raise HTTPException(400, "Each GraphQL operation must be a JSON object")
    for name, types in _FIELDS.items():
        if not isinstance(item.get(name), types):
            raise HTTPException(400, f"The GraphQL operation's `{name}` has the wrong type")


def decode_json(data: str | bytes) -> Any:
    """JSON, or HTTPException(400) for anything that is not valid JSON."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise HTTPException(400, "Unable to parse request body as JSON") from exc


def parse_request_json(data: str | bytes) -> Any:
    """The decoded body: an operation object or a list of them; else HTTPException(400)."""
    value = decode_json(data)
    if value == []:
        raise HTTPException(400, "A batch must hold at least one operation")
    for item in value if isinstance(value, list) else [value]:
        _check_operation(item)
    return value
