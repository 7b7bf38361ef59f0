"""Webhook rules without I/O: event types, stable event ids, signatures, retry delays, and
which network addresses a webhook may reach.

The signature is Stripe's shape (DESIGN.md section 2b): ``t=<unix seconds>,v1=<hex>``, where
``<hex>`` is HMAC-SHA256 keyed by the secret (UTF-8) over ``"<t>.<raw body>"``; while a
rotated secret is still valid there is one ``v1`` per secret, the new one first.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import uuid
from collections.abc import Iterable

PAYMENT_EVENT_TYPES = ("payment.pending", "payment.authorized", "payment.succeeded",
                       "payment.failed", "payment.canceled")
REFUND_EVENT_TYPES = ("refund.pending", "refund.succeeded", "refund.failed")
EVENT_TYPES = PAYMENT_EVENT_TYPES + REFUND_EVENT_TYPES

# Event ids are uuid5 of the payment and its version in this namespace: the same event has
# the same id on every redelivery, every sender process and every endpoint.
_EVENT_NAMESPACE = uuid.UUID("6f0b8f0e-3c1a-4a8e-9d55-2a7f1c9b6e14")


def event_type(payment_status: str, refund_status: str | None = None) -> str:
    """``payment.<status>``, or ``refund.<status>`` for an event announcing a refund."""
    if refund_status is not None:
        return f"refund.{refund_status.lower()}"
    return f"payment.{payment_status.lower()}"


def event_id(payment_id: uuid.UUID, version: int) -> uuid.UUID:
    """The id of the event of ``payment_id`` at ``version`` (one event per payment version)."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{payment_id}:{version}")


def unknown_event_types(names: Iterable[str]) -> list[str]:
    return [name for name in names if name not in EVENT_TYPES]


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed by ``secret`` as UTF-8."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets: Iterable[str], timestamp: int, body: bytes) -> str:
    """``t=<timestamp>,v1=<hex>[,v1=<hex>]``: one v1 per secret, in the order given."""
    parts = [f"t={timestamp}"] + [f"v1={signature(s, timestamp, body)}" for s in secrets]
    return ",".join(parts)


def parse_signature_header(header: str) -> tuple[int | None, list[str]]:
    """The timestamp and the v1 values of a signature header (None, [] when malformed)."""
    timestamp: int | None = None
    values: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            values.append(value)
    return timestamp, values


def retry_delay_s(attempts: int, *, base_s: float, max_s: float, jitter: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: ``base_s`` doubling per
    attempt up to ``max_s``, then scaled by ``jitter`` (0..1, random) into [half, all] of it,
    so the first retry comes within ``base_s`` and retries of many deliveries spread out."""
    exponent = min(max(attempts - 1, 0), 62)
    ceiling: float = min(base_s * float(2 ** exponent), max_s)
    return ceiling * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


# Addresses no webhook may reach outside dev: cloud metadata services answer on these.
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
             ipaddress.ip_address("100.100.100.200")}


def address_refusal(address: str, *, dev: bool) -> str | None:
    """Why a webhook may not connect to ``address`` (an IP literal), or None when it may.

    Only public unicast addresses are allowed; dev mode also allows loopback, so partners can
    try webhooks on 127.0.0.1. Private, link-local, metadata, multicast, reserved and
    unspecified addresses are refused everywhere (an IPv4-mapped IPv6 address is judged as
    the IPv4 address it carries)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if dev else "loopback address"
    if ip in _METADATA:
        return "metadata address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_private or (isinstance(ip, ipaddress.IPv4Address)
                         and ip in ipaddress.ip_network("100.64.0.0/10")):
        return "private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "non-public address"
    return None


__all__ = [
    "EVENT_TYPES",
    "PAYMENT_EVENT_TYPES",
    "REFUND_EVENT_TYPES",
    "address_refusal",
    "event_id",
    "event_type",
    "parse_signature_header",
    "retry_delay_s",
    "signature",
    "signature_header",
    "unknown_event_types",
]
