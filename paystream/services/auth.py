"""Who is calling: API keys to partners and scopes, and the tenancy rules of DESIGN.md section 3,
enforced here and nowhere else."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ..db import Database
from ..db.partners import KeyOwner, owner_of_key
from ..domain.errors import Forbidden, Unauthenticated

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
    """Resolves API keys on the primary: a replica lags, and it would keep accepting a key
    revoked a moment ago (or refuse one created a moment ago). The lookup is one indexed
    row, so the primary's cost is small."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def caller_for(self, authorization: str | None) -> Caller:
        token = bearer_token(authorization)
        if token is None or len(token) > 200:
            raise Unauthenticated("send an API key as 'Authorization: Bearer <key>'")
        owner = await self._lookup(token)
        if owner is None:
            raise Unauthenticated("unknown or revoked API key")
        return Caller(partner_id=owner.partner_id, key_id=owner.key_id, scopes=owner.scopes)

    async def _lookup(self, token: str) -> KeyOwner | None:
        return await self._db.read(lambda s: owner_of_key(s, token), primary=True)
