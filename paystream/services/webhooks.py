"""Webhook endpoints, managed by partners through the API and by operators at the CLI.

An endpoint's URL is checked when it is registered (and the sender checks it again before
every attempt): https only outside dev, and no loopback, link-local, private or metadata
address after DNS resolution. Its signing secret is generated here, answered once, and
stored encrypted. Everything a partner cannot see (another partner's endpoint) is reported
exactly as a missing one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Settings
from ..db import Database, ReadSession
from ..db.partners import partner_id_by_name
from ..db.webhook_schedule import resend
from ..db.webhooks import (
    DeliveryRow,
    EndpointRow,
    delete_endpoint,
    deliveries_page,
    enable_endpoint,
    endpoint_of,
    endpoints_of,
    insert_endpoint,
    lock_partner_endpoints,
    rotate_secret,
)
from ..domain.errors import BadUserInput, NotFound, Unavailable
from ..domain.ledger import SYSTEM_PARTNER_ID
from ..domain.validation import parse_uuid
from ..domain.webhooks import EVENT_TYPES, unknown_event_types
from ..webhooks.secrets import SecretBox, new_secret
from ..webhooks.urls import Resolver, UrlRefused, check_url, system_resolver
from .auth import READ, WRITE, Caller

log = logging.getLogger("paystream.webhooks")


@dataclass(frozen=True, slots=True)
class CreatedEndpoint:
    """An endpoint and its signing secret in clear: answered once, never again."""

    endpoint: EndpointRow
    secret: str


def validate_events(events: Sequence[str] | None) -> list[str]:
    """The event types to send (all when omitted), deduplicated in the order given."""
    if events is None:
        return list(EVENT_TYPES)
    if not events:
        raise BadUserInput("events: name at least one event type, or omit it for all",
                           field="events", extensions={"reason": "NO_EVENT_TYPES"})
    unknown = unknown_event_types(events)
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise BadUserInput(f"events: unknown event type(s) {shown}; known: "
                           + ", ".join(EVENT_TYPES), field="events",
                           extensions={"reason": "UNKNOWN_EVENT_TYPE"})
    return list(dict.fromkeys(events))


class WebhookService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self._box = SecretBox(settings.webhooks)
        # Replaceable: tests change what a host resolves to.
        self.resolver: Resolver = system_resolver

    async def check_url(self, url: str) -> None:
        try:
            await check_url(url, dev=self._settings.dev, resolver=self.resolver,
                            timeout_s=self._settings.webhooks.resolve_timeout_s)
        except UrlRefused as exc:
            raise BadUserInput(exc.message, field="url",
                               extensions={"reason": exc.reason}) from None

    def _encrypt(self, secret: str) -> bytes:
        if not self._box.configured:
            log.error("webhook endpoint refused: PAYSTREAM_WEBHOOKS__ENCRYPTION_KEY is not set")
            raise Unavailable("webhooks are not configured on this server")
        return self._box.encrypt(secret)

    async def create(self, caller: Caller, url: str, events: Sequence[str] | None) -> CreatedEndpoint:
        caller.require(WRITE)
        return await self.create_for(caller.partner_id, url, events)

    async def create_for(self, partner_id: uuid.UUID, url: str,
                         events: Sequence[str] | None) -> CreatedEndpoint:
        wanted = validate_events(events)
        url = url.strip()
        await self.check_url(url)
        secret = new_secret()
        ciphertext = self._encrypt(secret)
        limit = self._settings.webhooks.max_endpoints_per_partner
        async with self._db.write_session() as session:
            if await lock_partner_endpoints(session, partner_id) >= limit:
                raise BadUserInput(f"at most {limit} webhook endpoints per partner; delete one "
                                   "first", extensions={"reason": "TOO_MANY_ENDPOINTS"})
            endpoint = await insert_endpoint(session, endpoint_id=uuid.uuid4(),
                                             partner_id=partner_id, url=url, events=wanted,
                                             secret_ciphertext=ciphertext)
        return CreatedEndpoint(endpoint, secret)

    async def endpoints(self, caller: Caller) -> list[EndpointRow]:
        """The caller's endpoints, oldest first, from the primary (a new one is listed at once)."""
        caller.require(READ)

        async def read(session: ReadSession) -> list[EndpointRow]:
            return await endpoints_of(session, caller.partner_id)

        return await self._db.read(read, primary=True)

    async def delete(self, caller: Caller, raw_id: str) -> bool:
        """True when the endpoint was deleted now; False when there is none (or not the
        caller's). Its pending deliveries and its log go with it."""
        caller.require(WRITE)
        endpoint_id = parse_uuid(raw_id)
        if endpoint_id is None:
            return False
        async with self._db.write_session() as session:
            return await delete_endpoint(session, caller.partner_id, endpoint_id)

    async def rotate(self, caller: Caller, raw_id: str) -> CreatedEndpoint:
        caller.require(WRITE)
        return await self.rotate_for(caller.partner_id, raw_id)

    async def rotate_for(self, partner_id: uuid.UUID | None, raw_id: str) -> CreatedEndpoint:
        """A new secret, answered once; the old one keeps signing (a second v1) for
        ``previous_secret_ttl_s`` (24 h)."""
        endpoint_id = parse_uuid(raw_id)
        secret = new_secret()
        ciphertext = self._encrypt(secret)
        endpoint = None
        if endpoint_id is not None:
            async with self._db.write_session() as session:
                endpoint = await rotate_secret(
                    session, partner_id, endpoint_id, secret_ciphertext=ciphertext,
                    previous_ttl_s=self._settings.webhooks.previous_secret_ttl_s)
        if endpoint is None:
            raise NotFound("no such webhook endpoint", field="id")
        return CreatedEndpoint(endpoint, secret)

    async def enable(self, caller: Caller, raw_id: str) -> EndpointRow:
        caller.require(WRITE)
        return (await self.enable_for(caller.partner_id, raw_id))[0]

    async def enable_for(self, partner_id: uuid.UUID | None, raw_id: str
                         ) -> tuple[EndpointRow, int]:
        """A DISABLED endpoint ENABLED again, with how many of its events are due now: those
        held while it was disabled and those given up in the failure streak that disabled it
        (each with a new retry window). An ENABLED one is answered unchanged."""
        endpoint_id = parse_uuid(raw_id)
        enabled = None
        if endpoint_id is not None:
            async with self._db.write_session() as session:
                enabled = await enable_endpoint(session, partner_id, endpoint_id)
        if enabled is None:
            raise NotFound("no such webhook endpoint", field="id")
        if enabled[1]:
            log.info("webhook endpoint %s enabled; %d event(s) due again", enabled[0].id,
                     enabled[1])
        return enabled

    async def deliveries(self, caller: Caller, raw_endpoint_id: str, *, limit: int,
                         after: str | None) -> list[DeliveryRow]:
        """Attempts to one of the caller's endpoints, newest first; ``after`` is the id of
        the last attempt already seen."""
        caller.require(READ)
        before = None
        if after is not None:
            if not after.isdigit() or len(after) > 18:
                raise BadUserInput("after: not a delivery id this API issued", field="after")
            before = int(after)
        endpoint_id = parse_uuid(raw_endpoint_id)

        async def read(session: ReadSession) -> list[DeliveryRow] | None:
            if endpoint_id is None or await endpoint_of(session, caller.partner_id,
                                                        endpoint_id) is None:
                return None
            return await deliveries_page(session, endpoint_id, limit=limit, before=before)

        rows = await self._db.read(read, primary=True)
        if rows is None:
            raise NotFound("no such webhook endpoint", field="endpointId")
        return rows

    # Operators (the CLI): by partner name, or any endpoint by id.

    async def partner_named(self, name: str) -> uuid.UUID:
        partner_id = await self._db.read(lambda s: partner_id_by_name(s, name), primary=True)
        if partner_id is None or partner_id == SYSTEM_PARTNER_ID:
            raise NotFound(f"no partner named {name!r}")
        return partner_id

    async def delete_any(self, raw_id: str) -> bool:
        endpoint_id = parse_uuid(raw_id)
        if endpoint_id is None:
            return False
        async with self._db.write_session() as session:
            return await delete_endpoint(session, None, endpoint_id)

    async def resend(self, raw_event_id: str) -> tuple[int, int]:
        """Schedule an event again for every endpoint it was scheduled for: the numbers of
        endpoints it is due at now, and of DISABLED ones it is held for until enabled."""
        event_id = parse_uuid(raw_event_id)
        if event_id is None:
            raise BadUserInput("EVENT_ID is not an event id", field="eventId")
        async with self._db.write_session() as session:
            due, held = await resend(session, event_id)
        if due + held == 0:
            raise NotFound("no webhook was scheduled for that event")
        return due, held


__all__ = ["CreatedEndpoint", "WebhookService", "validate_events"]
