"""The sender's HTTP clients: connections pinned to addresses the URL rules allow, one
connection pool per endpoint.

The URL is checked before each attempt, and the connection is checked again where it is
made: httpcore's network backend resolves the host with the same resolver, refuses a
forbidden address and connects to the checked IP itself (TLS still verifies the host
name). A name that resolves to a public address for the check and to a private one for the
connection (DNS rebinding) therefore cannot reach the private one. No redirects are followed
and no proxy from the environment is used.

One pool per endpoint, not one for the process: httpcore's pool examines every connection it
holds (a poll of each socket) whenever a request starts or ends, so one pool of 64 busy
connections spent the sender's CPU on bookkeeping: httpx POSTing to a local receiver managed
about 90 requests a second at 64 in flight against 850 at one (docs/benchmarks.md, scenario 9).
An endpoint never has more than ``max_in_flight_per_endpoint`` attempts in flight, so its pool
of that many connections never makes a request wait for one. Pools of endpoints not used
lately are closed once more than ``max_pools`` are open; all share one TLS context.
"""

from __future__ import annotations

import typing
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpcore
import httpx

from ..config import WebhookSettings
from .urls import Resolver, UrlRefused, resolve_checked


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, resolver: Resolver, *, dev: bool, timeout_s: float) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolver = resolver
        self._dev = dev
        self._timeout_s = timeout_s

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await resolve_checked(host, port, dev=self._dev, resolver=self._resolver,
                                              timeout_s=self._timeout_s)
        except UrlRefused as exc:
            raise httpcore.ConnectError(exc.message) from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address,
                                                     socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are not sent to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class WebhookClients:
    """httpx clients for deliveries, one per endpoint: the guarded backend, the request
    timeout for connect, read and write alike, no redirects, no environment proxies."""

    def __init__(self, settings: WebhookSettings, resolver: Resolver, *, dev: bool,
                 max_pools: int = 256) -> None:
        self._settings = settings
        self._backend = _GuardedBackend(resolver, dev=dev, timeout_s=settings.resolve_timeout_s)
        # Loading the CA bundle takes milliseconds: once for every pool.
        self._ssl_context = httpx.create_ssl_context(trust_env=False)
        self._max_pools = max_pools
        self._clients: OrderedDict[uuid.UUID, httpx.AsyncClient] = OrderedDict()
        self._busy: Counter[uuid.UUID] = Counter()

    def _client(self) -> httpx.AsyncClient:
        per_endpoint = self._settings.max_in_flight_per_endpoint
        transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0)
        # httpx takes no network backend, so its connection pool is replaced by one that has
        # ours (same TLS context, the endpoint's limits). Pinned to httpx 0.28's attribute
        # name; the DNS-change test covers it.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=self._ssl_context, max_connections=per_endpoint,
            max_keepalive_connections=per_endpoint, keepalive_expiry=5.0,
            network_backend=self._backend)
        return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False,
                                 timeout=httpx.Timeout(self._settings.request_timeout_s))

    @asynccontextmanager
    async def client(self, endpoint_id: uuid.UUID) -> AsyncIterator[httpx.AsyncClient]:
        """The endpoint's client, for one attempt."""
        client = self._clients.get(endpoint_id)
        if client is None:
            client = self._clients[endpoint_id] = self._client()
        self._clients.move_to_end(endpoint_id)
        self._busy[endpoint_id] += 1
        try:
            yield client
        finally:
            self._busy[endpoint_id] -= 1
            if self._busy[endpoint_id] <= 0:
                del self._busy[endpoint_id]
            await self._evict()

    async def _evict(self) -> None:
        """Close the least recently used idle pools beyond ``max_pools``."""
        while len(self._clients) > self._max_pools:
            idle = next((e for e in self._clients if e not in self._busy), None)
            if idle is None:
                return
            await self._clients.pop(idle).aclose()

    @property
    def pools(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        while self._clients:
            _, client = self._clients.popitem()
            await client.aclose()


__all__ = ["WebhookClients"]
