"""The sender's HTTP client: connections pinned to addresses the URL rules allow.

The URL is checked before each attempt, and the connection is checked again where it is
made: httpcore's network backend resolves the host with the same resolver, refuses a
forbidden address and connects to the checked IP itself (TLS still verifies the host
name). A name that resolves to a public address for the check and to a private one for the
connection (DNS rebinding) therefore cannot reach the private one. No redirects are followed
and no proxy from the environment is used.
"""

from __future__ import annotations

import typing

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


def webhook_client(settings: WebhookSettings, resolver: Resolver, *, dev: bool) -> httpx.AsyncClient:
    """An httpx client for deliveries: the guarded backend, the request timeout for connect,
    read and write alike, no redirects, no environment proxies."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0)
    # httpx takes no network backend, so its connection pool is replaced by one that has ours
    # (same TLS context and limits). Pinned to httpx 0.28's attribute name; a test covers it.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=settings.max_in_flight,
        max_keepalive_connections=settings.max_in_flight,
        keepalive_expiry=5.0,
        network_backend=_GuardedBackend(resolver, dev=dev, timeout_s=settings.resolve_timeout_s),
    )
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False,
                             timeout=httpx.Timeout(settings.request_timeout_s))


__all__ = ["webhook_client"]
