"""Error shaping: domain errors keep their stable code; anything unexpected becomes INTERNAL
with no detail but a request id (the detail goes to the log)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from ..domain.errors import ErrorCode, PaystreamError
from .limits import token_limit_error

log = logging.getLogger("paystream.errors")


def shape_error(error: GraphQLError, request_id: str | None) -> GraphQLError:
    original = error.original_error
    if original is None and error.extensions and "code" in error.extensions:
        return error  # shaped already (a streamed result, then the operation's last result)
    if isinstance(original, PaystreamError):
        extensions = original.graphql_extensions()
        message = original.message
    elif original is None and (too_complex := token_limit_error(error)) is not None:
        extensions = too_complex.graphql_extensions()
        message = too_complex.message
    elif original is None:
        # Syntax and validation errors: the client's query is at fault, say what is wrong.
        extensions = {"code": ErrorCode.BAD_USER_INPUT.value}
        message = error.message
    elif isinstance(original, InvalidOperationTypeError):
        # Only subscriptions run over the websocket (PaystreamSchema.stream).
        extensions = {"code": ErrorCode.BAD_USER_INPUT.value}
        message = (f"{error.message} over the websocket, which carries subscriptions; send "
                   "queries and mutations over HTTP to /graphql")
    elif isinstance(original, CannotGetOperationTypeError):
        extensions = {"code": ErrorCode.BAD_USER_INPUT.value}
        message = error.message
    elif isinstance(original, GraphQLError) and original.original_error is None:
        # A variable's value refused by its type (an unknown enum value in a filter): the
        # outer message names the variable and the path inside it ("at .status").
        extensions = {"code": ErrorCode.BAD_USER_INPUT.value}
        message = error.message
    elif isinstance(original, GraphQLError):
        return shape_error(original, request_id)
    else:
        log.error(
            "unexpected error in %s (request %s)", ".".join(map(str, error.path or [])), request_id,
            exc_info=original,
        )
        extensions = {"code": ErrorCode.INTERNAL.value}
        message = "internal error"
    if request_id:
        extensions["requestId"] = request_id
    return GraphQLError(
        message, nodes=error.nodes, source=error.source, positions=error.positions,
        path=error.path, original_error=None, extensions=extensions,
    )


class ErrorCodes(SchemaExtension):
    """Maps every error of a result once, after the operation ran."""

    def on_operation(self) -> Iterator[None]:
        yield
        self._shape(self.execution_context.result)

    def on_stream_result(self, result: object) -> Iterator[None]:
        """Each result a subscription streams, before it is sent."""
        self._shape(result)
        yield

    def _shape(self, result: object) -> None:
        errors = getattr(result, "errors", None)
        if result is not None and errors:
            request_id = getattr(self.execution_context.context, "request_id", None)
            result.errors = [shape_error(e, request_id) for e in errors]  # type: ignore[attr-defined]  # ExecutionResult and GraphQLExecutionResult both have it; typed as object
