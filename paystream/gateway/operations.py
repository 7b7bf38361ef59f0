"""What the gateway does around each HTTP GraphQL operation (each one of a batch): resolve a
persisted query, take its rate-limit tokens (one, or one per createPayments input), then
execute, register a persisted query that proved acceptable, and record metrics. Also the
view's websocket Origin list."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from graphql import DocumentNode, FieldNode, GraphQLError, OperationDefinitionNode
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from strawberry.http import GraphQLRequestData
from strawberry.http.websocket_origin import normalize_allowed_origins
from strawberry.types import ExecutionResult

from ..cache.breaker import Breaker
from ..domain.errors import BadUserInput, PaystreamError, QueryTooComplex, RateLimited
from ..metrics import ERRORS, RATE_LIMITED, REQUEST_SECONDS, REQUESTS
from ..schema.context import Context
from ..schema.limits import cached_parser
from ..services.app import Services
from ..services.payments import check_batch_size
from ..tracing import span
from .apq import PersistedQueries, PersistedQueryError
from .bulk import bulk_size
from .ratelimit import RateLimiter, retry_after_header

Execute = Callable[[GraphQLRequestData], Awaitable[ExecutionResult]]

# Operation names come from clients: past this many distinct names, the rest are counted under
# "other", so a client cannot grow the metrics without bound.
MAX_OPERATION_NAMES = 500


class OperationGate:
    def __init__(self, services: Services) -> None:
        settings = services.settings
        guard = Breaker(settings.redis.retry_after_failure_s)
        redis = services.cache.redis
        self.persisted = PersistedQueries(redis, settings.api.persisted_query_ttl_s, guard)
        self.limiter = RateLimiter(services.limiter_redis, settings.limits, guard)
        # The schema's own parse cache (same size, same arguments): parsed once per document.
        self._parse: Callable[..., DocumentNode] = cached_parser(settings.limits.parser_cache_size)
        self._max_tokens = settings.limits.max_tokens
        self._max_bulk = settings.limits.max_bulk_payments
        self._names: set[str] = set()

    async def run(self, data: GraphQLRequestData, context: Context, sub_response: Any,
                  execute: Execute) -> ExecutionResult:
        # Traced (paystream.tracing), the operation is a span, and what it does (the database,
        # Redis, the messages it sends) is in its trace.
        with span("graphql", kind=SpanKind.SERVER,
                  attributes={"paystream.request_id": context.request_id or ""}) as current:
            result = await self._run(data, context, sub_response, execute, current)
            if current is not None:
                _describe_span(current, result)
            return result

    async def _run(self, data: GraphQLRequestData, context: Context, sub_response: Any,
                   execute: Execute, current: Span | None) -> ExecutionResult:
        name, kind = "unknown", "query"
        started = time.perf_counter()
        result: ExecutionResult | None = None
        try:
            try:
                resolved = await self.persisted.resolve(data.query, data.extensions)
            except PersistedQueryError as exc:
                result = ExecutionResult(data=None, errors=[exc.error])
                return result
            query = resolved.query
            try:
                name, kind, operation = self._describe(query, data.operation_name)
                if current is not None:
                    _name_span(current, name, kind, operation)
                if kind == "subscription":
                    # Strawberry would run it as a single result and fail it as INTERNAL.
                    raise BadUserInput("subscriptions are served over the websocket at /graphql")
                # A bulk createPayments costs a token per input; refused past its limit before
                # a token is taken.
                tokens = self._tokens(operation, query, data.variables)
            except (BadUserInput, QueryTooComplex) as exc:
                # Refused before the rate limiter: what a token is taken for must be known.
                result = _refusal(exc, context)
                return result
            wait = await self.limiter.retry_after(kind, client_key(context), tokens)
            if wait is not None:
                result = self._refuse(kind, wait, context, sub_response, tokens)
                return result
            result = await execute(dataclasses.replace(data, query=query))
            if context.caller is not None and query in context.executed:
                # Authenticated, and the text passed parsing and every limit (it reached
                # execution): only now is it worth keeping for the next request.
                await self.persisted.register(resolved)
            return result
        finally:
            REQUESTS.labels(name, kind).inc()
            REQUEST_SECONDS.labels(name, kind).observe(time.perf_counter() - started)
            for returned in (result.errors or []) if result is not None else []:
                ERRORS.labels(str((returned.extensions or {}).get("code", "UNKNOWN"))).inc()

    def _tokens(self, operation: OperationDefinitionNode | None, query: str | None,
                variables: dict[str, Any] | None) -> int:
        """Rate-limit tokens the operation takes: one, or for a mutation with createPayments
        the number of their inputs (at least one)."""
        if operation is None or operation.operation.value != "mutation" or query is None:
            return 1
        document = self._parse(query, max_tokens=self._max_tokens)
        # Variables are the client's JSON: anything but an object leaves them to validation.
        size = bulk_size(document, operation, variables if isinstance(variables, dict) else {})
        check_batch_size(size, self._max_bulk)
        return max(1, size)

    def _describe(self, query: str | None, operation_name: str | None
                  ) -> tuple[str, str, OperationDefinitionNode | None]:
        """(operation name for metrics, type, its node) of the operation that
        ``operationName`` selects, as the GraphQL spec's GetOperation does: a document of
        several operations needs a name, and the name must be one of them (BadUserInput otherwise, because the limiter
        and the metrics would else bill one operation and Strawberry run another). A document
        that does not parse counts as a query, so malformed requests use the query bucket."""
        if query is None:
            return "unknown", "query", None
        try:
            document = self._parse(query, max_tokens=self._max_tokens)
        except GraphQLError:
            return "invalid", "query", None
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if operation_name is None:
            if len(operations) > 1:
                raise BadUserInput(
                    f"the document has {len(operations)} operations: name the one to run in "
                    "operationName", field="operationName")
            operation = operations[0] if operations else None
        else:
            operation = next((o for o in operations
                              if o.name is not None and o.name.value == operation_name), None)
            if operation is None:  # the name is the client's: not echoed
                raise BadUserInput("no operation of the document has the name in operationName",
                                   field="operationName")
        if operation is None:
            return "unknown", "query", None  # no operation at all: validation says so
        name = operation.name.value if operation.name else "anonymous"
        if name not in self._names:
            if len(self._names) >= MAX_OPERATION_NAMES:
                name = "other"
            else:
                self._names.add(name)
        return name, operation.operation.value, operation

    def _refuse(self, kind: str, wait: float, context: Context,
                sub_response: Any, tokens: int = 1) -> ExecutionResult:
        RATE_LIMITED.labels(kind).inc()
        seconds = round(wait, 3)
        burst = self.limiter.capacity(kind)
        if tokens > burst:
            # It can never pass whole: the hint is when the bucket is full again, for the
            # smaller batches the client must send instead.
            error = RateLimited(
                f"a batch of {tokens} exceeds the {kind} burst of {burst}: it can never "
                f"pass; send at most {burst} inputs per request",
                retry_after_seconds=seconds, extensions={"burst": burst})
        else:
            error = RateLimited(f"rate limit for {kind} operations reached; retry in {seconds} s",
                                retry_after_seconds=seconds)
        extensions = {**error.graphql_extensions(), "requestId": context.request_id}
        sub_response.status_code = 429
        sub_response.headers["Retry-After"] = retry_after_header(wait)
        return ExecutionResult(data=None, errors=[GraphQLError(error.message,
                                                               extensions=extensions)])


def _name_span(current: Span, name: str, kind: str,
               operation: OperationDefinitionNode | None) -> None:
    """``<type> <operation name>``, or ``<type> <root fields>`` for an anonymous operation
    (``mutation createPayment``): the name the metrics use, bounded the same way."""
    fields = sorted({s.name.value for s in operation.selection_set.selections
                     if isinstance(s, FieldNode)}) if operation is not None else []
    label = ",".join(fields) if name == "anonymous" and fields else name
    current.update_name(f"{kind} {label}")
    current.set_attribute("graphql.operation.type", kind)
    current.set_attribute("graphql.operation.name", name)
    if fields:
        current.set_attribute("paystream.graphql.fields", fields)


def _describe_span(current: Span, result: ExecutionResult) -> None:
    """The error codes of the result; an error status only for the server's own failures
    (INTERNAL, UNAVAILABLE): a client's bad input is not a fault of the service."""
    codes = sorted({str((e.extensions or {}).get("code", "UNKNOWN")) for e in result.errors or []})
    if codes:
        current.set_attribute("paystream.graphql.error_codes", codes)
    if {"INTERNAL", "UNAVAILABLE"} & set(codes):
        current.set_status(Status(StatusCode.ERROR, ",".join(codes)))


def _refusal(error: PaystreamError, context: Context) -> ExecutionResult:
    return ExecutionResult(data=None, errors=[GraphQLError(
        error.message, extensions={**error.graphql_extensions(), "requestId": context.request_id})])


def client_key(context: Context) -> str:
    """Whose bucket: the API key; without a valid key, the client address."""
    if context.caller is not None:
        return f"key:{context.caller.key_id}"
    client = getattr(context.request, "client", None)
    return f"addr:{client.host if client else 'unknown'}"


class GatedOperations:
    """Mixin for the GraphQL view (before Strawberry's class in the bases): every HTTP
    operation passes the :class:`OperationGate`."""

    gate: OperationGate
    allowed_origins: Any

    def set_up_gate(self, services: Services) -> None:
        self.gate = OperationGate(services)
        # Browsers' websocket handshakes: an absent Origin (not a browser) and the same origin
        # pass; any other origin must be listed (the CORS list).
        self.allowed_origins = normalize_allowed_origins(services.settings.api.cors_origins)

    def should_render_graphql_ide(self, request: Any) -> bool:
        # A persisted-query GET carries no `query` either: it is an operation, not a page load.
        return ("extensions" not in request.query_params
                and super().should_render_graphql_ide(request))  # type: ignore[misc]  # a mixin: the base is Strawberry's view

    async def execute_single(  # Strawberry's signature
        self, request: Any, request_adapter: Any, sub_response: Any, context: Any,
        root_value: Any, request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        async def execute(data: GraphQLRequestData) -> ExecutionResult:
            result: ExecutionResult = await super(GatedOperations, self).execute_single(  # type: ignore[misc]  # mixin, see above
                request=request, request_adapter=request_adapter, sub_response=sub_response,
                context=context, root_value=root_value, request_data=data,
            )
            return result

        return await self.gate.run(request_data, context, sub_response, execute)
