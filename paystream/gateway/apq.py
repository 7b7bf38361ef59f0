"""Automatic persisted queries, as Apollo clients speak them: a request may carry
``extensions.persistedQuery = {"version": 1, "sha256Hash": ...}`` instead of the query text.
A known hash is answered from Redis; an unknown one gets ``PersistedQueryNotFound`` and the
client resends with the text, which registers it: once the request is authenticated and the
text has passed parsing and every limit (the gateway calls :meth:`PersistedQueries.register`
after execution), so an anonymous client cannot park texts in Redis, nor anyone a text the
server refuses. GET works the same way (``extensions`` as a
JSON query parameter), so a CDN may cache the short URLs.

Without Redis every lookup is a miss and nothing is registered: clients simply send the full
query each time, and no request fails because of it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..cache.breaker import Breaker
from ..domain.errors import ErrorCode
from ..metrics import PERSISTED_QUERIES

_SHA256 = re.compile(r"[0-9a-f]{64}")


class PersistedQueryError(Exception):
    """A persisted-query request that cannot be served; ``error`` is what the client gets."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.error = GraphQLError(message, extensions={"code": code})


def not_found() -> PersistedQueryError:
    # Apollo clients match on this message and code to resend the full query.
    return PersistedQueryError("PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND")


def sha256_hex(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Resolved:
    """The text to execute, and the hash to register it under once it proved acceptable
    (None: nothing to register, the text came from Redis or without the extension)."""

    query: str | None
    register_as: str | None = None


class PersistedQueries:
    def __init__(self, redis: Redis, ttl_s: int, guard: Breaker) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._guard = guard

    async def resolve(self, query: str | None, extensions: dict[str, Any] | None) -> Resolved:
        """The query text to execute: ``query`` itself without the extension, else the
        registered text of the hash. When both are sent, the hash is checked against the
        text; registering it is left to :meth:`register`."""
        persisted = (extensions or {}).get("persistedQuery")
        if persisted is None:
            return Resolved(query)
        if not isinstance(persisted, dict) or persisted.get("version") != 1:
            raise PersistedQueryError(
                "PersistedQueryNotSupported: only version 1 is supported",
                "PERSISTED_QUERY_NOT_SUPPORTED",
            )
        digest = persisted.get("sha256Hash")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise PersistedQueryError("persistedQuery.sha256Hash must be 64 lowercase hex digits",
                                      ErrorCode.BAD_USER_INPUT.value)
        if query is None:
            stored = await self._get(digest)
            if stored is None:
                PERSISTED_QUERIES.labels("miss").inc()
                raise not_found()
            PERSISTED_QUERIES.labels("hit").inc()
            return Resolved(stored)
        if sha256_hex(query) != digest:
            raise PersistedQueryError("provided sha256Hash does not match the query",
                                      ErrorCode.BAD_USER_INPUT.value)
        return Resolved(query, register_as=digest)

    async def register(self, resolved: Resolved) -> None:
        """Store the text of a :meth:`resolve` result that asked for it. Call only once the
        request is authenticated and the text passed parsing and every limit."""
        if resolved.register_as is None or resolved.query is None:
            return
        await self._put(resolved.register_as, resolved.query)
        PERSISTED_QUERIES.labels("registered").inc()

    async def _get(self, digest: str) -> str | None:
        if not self._guard.available:
            return None
        try:
            value = await self._redis.get(f"apq:{digest}")
        except (RedisError, OSError) as exc:
            self._guard.failed("persisted queries", exc)
            return None
        if value is None:
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    async def _put(self, digest: str, query: str) -> None:
        if not self._guard.available:
            return
        try:
            await self._redis.set(f"apq:{digest}", query.encode("utf-8"), ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            self._guard.failed("persisted queries", exc)
