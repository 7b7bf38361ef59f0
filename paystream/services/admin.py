"""Administration used by the CLI and the dev seed: partners, keys and accounts."""

from __future__ import annotations

import uuid

from ..db import Database, ReadSession
from ..db.accounts import create_account
from ..db.ledger import FundingPosting, fund
from ..db.partners import (
    ALL_SCOPES,
    KEY_PREFIX,
    KeyInfo,
    create_api_key,
    create_partner,
    key_listing,
    partner_id_by_name,
    revoke_api_key,
    revoke_api_key_by_id,
)
from ..domain.errors import BadUserInput, NotFound
from ..domain.ledger import SYSTEM_PARTNER_ID
from ..domain.money import Money


async def new_partner(db: Database, name: str, scopes: tuple[str, ...] = ALL_SCOPES) -> str:
    """Create a partner and its first API key; returns the key (shown once, stored hashed)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise BadUserInput("partner name must be 1 to 200 characters", field="name")
    if name.startswith("paystream:"):
        raise BadUserInput("partner names starting with 'paystream:' are the system's", field="name")
    async with db.write_session() as session:
        if await partner_id_by_name(session, name) is not None:
            raise BadUserInput(f"a partner named {name!r} exists already", field="name")
        partner_id = await create_partner(session, name)
        return await create_api_key(session, partner_id, scopes)


async def new_api_key(db: Database, partner: str, scopes: tuple[str, ...] = ALL_SCOPES) -> str:
    async with db.write_session() as session:
        partner_id = await partner_id_by_name(session, partner)
        if partner_id is None or partner_id == SYSTEM_PARTNER_ID:
            raise NotFound(f"no partner named {partner!r}")
        return await create_api_key(session, partner_id, scopes)


async def api_keys(db: Database, partner: str) -> list[KeyInfo]:
    """The keys of partner ``partner`` (ids, prefixes, scopes, dates), from the primary."""

    async def read(session: ReadSession) -> list[KeyInfo] | None:
        partner_id = await partner_id_by_name(session, partner)
        return None if partner_id is None else await key_listing(session, partner_id)

    keys = await db.read(read, primary=True)
    if keys is None:
        raise NotFound(f"no partner named {partner!r}")
    return keys


async def revoke_key(db: Database, key: str) -> None:
    """Revoke a key named by its id (from ``api_keys``) or given in clear (a leaked key).
    New requests with it fail at once; websocket connections it opened are closed with 4403
    within ``PAYSTREAM_SUBSCRIPTIONS__KEY_RECHECK_S`` (1 s), when their API process looks the
    key up again."""
    key = key.strip()
    key_id = None
    if not key.startswith(KEY_PREFIX):
        try:
            key_id = uuid.UUID(key)
        except ValueError:
            raise BadUserInput("give a key id (from `paystream partner keys`) or the key itself",
                               field="key") from None
    async with db.write_session() as session:
        if key_id is not None:
            revoked = await revoke_api_key_by_id(session, key_id)
        else:
            revoked = await revoke_api_key(session, key)
    if not revoked:
        raise NotFound("no live key matches (unknown, or revoked already)")


async def new_account(
    db: Database, *, partner: str, name: str, currency: str, balance: str = "0"
) -> uuid.UUID:
    """Create an account; a positive opening balance (a decimal string, e.g. "100.00") is a
    FUNDING posting from the currency's settlement account, in the same transaction."""
    return (await open_account(db, partner=partner, name=name, currency=currency,
                               balance=balance))[0]


async def open_account(
    db: Database, *, partner: str, name: str, currency: str, balance: str = "0"
) -> tuple[uuid.UUID, FundingPosting | None]:
    """:func:`new_account`, also returning the opening posting (None for a zero balance)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise BadUserInput("account name must be 1 to 200 characters", field="name")
    opening = Money.parse_balance(balance or "0", currency, field="balance")
    async with db.write_session() as session:
        partner_id = await partner_id_by_name(session, partner)
        if partner_id is None or partner_id == SYSTEM_PARTNER_ID:
            raise NotFound(f"no partner named {partner!r}")
        account_id = await create_account(
            session, partner_id=partner_id, name=name, currency=opening.currency, balance_minor=0,
        )
        posting = await fund(session, account_id, opening.minor) if opening.minor else None
    return account_id, posting
