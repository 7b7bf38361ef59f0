"""createAccount and accounts(first, after): a partner manages its own accounts.

An account made through the API starts at zero (funding stays an operator action at the CLI)
and is idempotent per (partner, idempotency key), like createPayment: the same key with the
same request returns the same account, with a different one IDEMPOTENCY_CONFLICT.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..db import Database, ReadSession
from ..db.accounts import insert_keyed, partner_page
from ..domain.currency import currency_exponent
from ..domain.entities import AccountRow
from ..domain.errors import BadUserInput, IdempotencyConflict
from ..domain.metadata import Metadata, validate_metadata
from ..domain.validation import validate_idempotency_key
from .auth import READ, WRITE, Caller
from .reads import Reader

MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class CreateAccount:
    """The createAccount input as the client sent it."""

    idempotency_key: str
    name: str
    currency: str
    metadata: Sequence[tuple[str, str]] | None = None


def account_request_hash(partner_id: uuid.UUID, name: str, currency: str,
                         metadata: Metadata = ()) -> str:
    """What makes two createAccount requests "the same": every field but the key (metadata
    only when given, so accounts made before it keep their hashes)."""
    fields: list[object] = [str(partner_id), name, currency]
    if metadata:
        fields.append({"metadata": [list(pair) for pair in metadata]})
    canonical = json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_account_name(name: str) -> str:
    """1 to 200 characters after trimming surrounding whitespace (a display name, unlike a key)."""
    trimmed = name.strip()
    if not trimmed or len(trimmed) > MAX_NAME_LENGTH:
        raise BadUserInput(f"name must be 1 to {MAX_NAME_LENGTH} characters", field="name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in trimmed):
        raise BadUserInput("name must not contain control characters", field="name")
    return trimmed


class AccountService:
    def __init__(self, db: Database, reader: Reader) -> None:
        self._db = db
        self._reader = reader

    async def create(self, caller: Caller, request: CreateAccount) -> AccountRow:
        """A zero-balance account owned by the caller (scope payments:write)."""
        caller.require(WRITE)
        key = validate_idempotency_key(request.idempotency_key)
        name = validate_account_name(request.name)
        currency_exponent(request.currency)  # BAD_USER_INPUT on currency unless ISO 4217
        metadata = validate_metadata(request.metadata)
        digest = account_request_hash(caller.partner_id, name, request.currency, metadata)
        async with self._db.write_session() as session:
            stored = await insert_keyed(
                session, partner_id=caller.partner_id, idempotency_key=key, request_hash=digest,
                name=name, currency=request.currency, now=datetime.now(UTC), metadata=metadata,
            )
        if stored.request_hash != digest:
            raise IdempotencyConflict("idempotencyKey was already used with a different request",
                                      field="idempotencyKey")
        if stored.created:
            await self._reader.remember_account(stored.row)
        return stored.row

    async def page(self, caller: Caller, *, limit: int,
                   before: tuple[datetime, uuid.UUID] | None) -> list[AccountRow]:
        """Up to ``limit`` of the caller's accounts, newest first, after the cursor. From the
        primary: an account created a moment ago must be listed whatever a replica's lag, and
        the page is one index range scan."""
        caller.require(READ)

        async def read(session: ReadSession) -> list[AccountRow]:
            return await partner_page(session, caller.partner_id, limit=limit, before=before)

        return await self._db.read(read, primary=True)
