"""The per-request context every resolver receives."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from strawberry.types import Info as StrawberryInfo

from ..domain.errors import PaystreamError, Unauthenticated

if TYPE_CHECKING:
    from ..services.app import Services
    from ..services.auth import Caller
    from .loaders import Loaders


@dataclass
class Context:
    """What a resolver may use: the caller, the request's DataLoaders, the services."""

    services: Services
    loaders: Loaders
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    caller: Caller | None = None
    request: Any = None
    response: Any = None
    # Set by Strawberry from the websocket connection_init payload.
    connection_params: dict[str, object] | None = None
    # Set when the key could not be checked (no database answered).
    auth_failure: PaystreamError | None = None
    # Query texts of this request that passed parsing and validation (every limit) and so
    # reached execution; filled by schema.limits.ReachedExecution. Persisted queries are
    # registered only from here.
    executed: set[str] = field(default_factory=set)
    # Websocket only: cuts the connection of a subscriber too slow to keep up.
    drop_connection: Callable[[], None] | None = None

    def require_caller(self) -> Caller:
        if self.auth_failure is not None:
            raise self.auth_failure
        if self.caller is None:
            raise Unauthenticated("send an API key as 'Authorization: Bearer <key>'")
        return self.caller


Info = StrawberryInfo[Context, None]
