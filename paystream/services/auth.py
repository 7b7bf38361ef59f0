"""Who is calling: API keys to partners and scopes, and the tenancy rules of DESIGN.md section 3,
enforced here and nowhere else."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from ..config import ApiSettings
from ..db import Database
from ..db.engine import ServerUnreachable
from ..db.notify import listen
from ..db.partners import KEYS_CHANNEL, KeyOwner, hash_key, owner_of_key_hash
from ..domain.errors import Forbidden, Unauthenticated
from ..metrics import API_KEY_LOOKUPS

READ = "payments:read"
WRITE = "payments:write"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated partner and the scopes of the key it used."""

    partner_id: uuid.UUID
    key_id: uuid.UUID
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope} scope")

    def owns(self, partner_id: uuid.UUID) -> bool:
        return partner_id == self.partner_id

    def may_see_payment(self, source_partner: uuid.UUID, destination_partner: uuid.UUID) -> bool:
        """A partner sees a payment when it owns either side of it."""
        return self.partner_id in (source_partner, destination_partner)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <key>`` value, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Resolves API keys on the primary, so a key revoked a moment ago is refused at once
    (a lagging replica would still have it live). The lookup is one index probe on the
    unique key hash. Only when the primary cannot be reached does it read a replica: reads
    keep working through a primary outage, and no revocation can be committed meanwhile.

    Resolved keys are kept in the process (``api.key_cache_size``), so most requests make no
    lookup at all. That is safe only because every revocation is pushed here on its commit
    (``db.partners.KEYS_CHANNEL``, heard by :meth:`run`): the kept keys are used only while
    the listening connection is up, and are forgotten whenever it is lost or comes back (a
    revocation may have been committed in between). A lookup that was under way when any
    revocation arrived is not kept: it may have read the key before the revocation's commit.
    """

    def __init__(self, db: Database, settings: ApiSettings | None = None,
                 primary_url: str = "") -> None:
        self._db = db
        self._settings = settings or ApiSettings(key_cache_size=0)
        self._primary_url = primary_url
        self._keys: OrderedDict[str, tuple[KeyOwner, float]] = OrderedDict()
        self._listening = False
        self._generation = 0  # changes with every revocation heard and every (re)connect

    async def caller_for(self, authorization: str | None) -> Caller:
        token = bearer_token(authorization)
        if token is None or len(token) > 200:
            raise Unauthenticated("send an API key as 'Authorization: Bearer <key>'")
        key_hash = hash_key(token)
        owner = self._kept(key_hash)
        if owner is None:
            generation = self._generation
            owner = await self._lookup(key_hash)
            API_KEY_LOOKUPS.labels("database").inc()
            if owner is None:
                raise Unauthenticated("unknown or revoked API key")
            if self._listening and generation == self._generation:
                self._keep(key_hash, owner)
        else:
            API_KEY_LOOKUPS.labels("cache").inc()
        return Caller(partner_id=owner.partner_id, key_id=owner.key_id, scopes=owner.scopes)

    async def _lookup(self, key_hash: str) -> KeyOwner | None:
        try:
            return await self._db.read(lambda s: owner_of_key_hash(s, key_hash), primary=True)
        except ServerUnreachable:
            return await self._db.read(lambda s: owner_of_key_hash(s, key_hash))

    def _kept(self, key_hash: str) -> KeyOwner | None:
        if not self._listening:
            return None
        kept = self._keys.get(key_hash)
        if kept is None:
            return None
        owner, expires = kept
        if expires < time.monotonic():
            del self._keys[key_hash]
            return None
        self._keys.move_to_end(key_hash)
        return owner

    def _keep(self, key_hash: str, owner: KeyOwner) -> None:
        self._keys[key_hash] = (owner, time.monotonic() + self._settings.key_cache_ttl_s)
        while len(self._keys) > self._settings.key_cache_size:
            self._keys.popitem(last=False)

    async def run(self) -> None:
        """Hear revocations until cancelled (the process's long-lived task). Without a cache
        (``key_cache_size`` 0) or a primary URL, there is nothing to hear."""
        if self._settings.key_cache_size <= 0 or not self._primary_url:
            return
        await listen(self._primary_url, KEYS_CHANNEL, self._revoked, on_ready=self._ready,
                     on_lost=self._lost, ping_s=self._settings.key_listener_ping_s,
                     application_name="paystream-key-listener")

    def _revoked(self, key_hash: str) -> None:
        self._generation += 1
        self._keys.pop(key_hash, None)

    def _ready(self) -> None:
        self._generation += 1
        self._keys.clear()
        self._listening = True

    def _lost(self) -> None:
        self._listening = False
        self._generation += 1
        self._keys.clear()
