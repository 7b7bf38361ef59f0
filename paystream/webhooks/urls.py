"""Where a webhook may go: https only outside dev, and never to a loopback, link-local,
private or metadata address, judged on the addresses the host resolves to (at registration
and again before every attempt; the connection itself is pinned to a checked address by
:mod:`paystream.webhooks.transport`).

The resolver is a parameter so tests can change what a name resolves to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from ..domain.webhooks import address_refusal

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> IP addresses``."""

MAX_URL_LENGTH = 2048


class UrlRefused(Exception):
    """A webhook URL that may not be used; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system's resolver (getaddrinfo)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_url(url: str, *, dev: bool) -> tuple[str, int]:
    """The host and port of an acceptable URL; raises :class:`UrlRefused`."""
    if len(url) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F
                                        for c in url):
        raise UrlRefused("URL_INVALID", f"url must be an absolute URL of at most "
                         f"{MAX_URL_LENGTH} characters without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("URL_INVALID", "url is not a valid URL") from None
    allowed = ("https", "http") if dev else ("https",)
    if parts.scheme not in allowed:
        raise UrlRefused("URL_SCHEME_NOT_ALLOWED", "url must use https"
                         + (" (or http in dev)" if dev else ""))
    if not parts.hostname:
        raise UrlRefused("URL_INVALID", "url has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("URL_INVALID", "url may not carry credentials")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve_checked(host: str, port: int, *, dev: bool, resolver: Resolver,
                          timeout_s: float) -> list[str]:
    """The addresses of ``host``, all of them allowed; raises :class:`UrlRefused`. A host
    with any refused address is refused (whichever one a connection picks must be safe)."""
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            async with asyncio.timeout(timeout_s):
                addresses = await resolver(host, port)
        except (OSError, TimeoutError, ValueError):  # ValueError: UnicodeError, a NUL
            raise UrlRefused("URL_NOT_RESOLVABLE", "url's host does not resolve") from None
    if not addresses:
        raise UrlRefused("URL_NOT_RESOLVABLE", "url's host does not resolve")
    for address in addresses:
        refusal = address_refusal(address, dev=dev)
        if refusal is not None:
            raise UrlRefused("URL_ADDRESS_NOT_ALLOWED",
                             f"url's host resolves to a {refusal}, which webhooks may not reach")
    return addresses


async def check_url(url: str, *, dev: bool, resolver: Resolver, timeout_s: float) -> list[str]:
    """Refuse ``url`` (:class:`UrlRefused`) unless a webhook may be sent to it now."""
    host, port = parse_url(url, dev=dev)
    return await resolve_checked(host, port, dev=dev, resolver=resolver, timeout_s=timeout_s)


__all__ = ["Resolver", "UrlRefused", "check_url", "parse_url", "resolve_checked",
           "system_resolver"]
