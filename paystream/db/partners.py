"""Partners and their API keys. Keys are stored as sha256 hashes, never in clear."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from .engine import ReadSession, WriteSession
from .models import ApiKey, Partner

ALL_SCOPES = ("payments:read", "payments:write")
KEY_PREFIX = "psk_"


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a plain sha256 is enough: there is nothing to
    # brute-force that a slow hash would protect.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """What an API key resolves to."""

    partner_id: uuid.UUID
    key_id: uuid.UUID
    scopes: frozenset[str]


async def create_partner(session: WriteSession, name: str) -> uuid.UUID:
    partner_id = uuid.uuid4()
    session.add(Partner(id=partner_id, name=name))
    await session.flush()
    return partner_id


async def partner_id_by_name(session: ReadSession | WriteSession, name: str) -> uuid.UUID | None:
    return (await session.execute(select(Partner.id).where(Partner.name == name))).scalar()


async def create_api_key(
    session: WriteSession, partner_id: uuid.UUID, scopes: tuple[str, ...] = ALL_SCOPES
) -> str:
    """Create a key and return it in clear: the only time it is ever seen."""
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {ALL_SCOPES}, got {sorted(scopes)}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=uuid.uuid4(),
            partner_id=partner_id,
            key_hash=hash_key(key),
            prefix=key[:12],
            scopes=sorted(set(scopes)),
        )
    )
    await session.flush()
    return key


_OWNER = select(ApiKey.partner_id, ApiKey.id, ApiKey.scopes).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


async def owner_of_key(session: ReadSession | WriteSession, key: str) -> KeyOwner | None:
    """The partner and scopes of a live (not revoked) key, or None."""
    return await owner_of_key_hash(session, hash_key(key))


async def owner_of_key_hash(session: ReadSession | WriteSession, key_hash: str
                            ) -> KeyOwner | None:
    row = (await session.execute(_OWNER, {"key_hash": key_hash})).first()
    if row is None:
        return None
    return KeyOwner(partner_id=row[0], key_id=row[1], scopes=frozenset(row[2]))


async def revoke_api_key(session: WriteSession, key: str) -> bool:
    """Revoke a live key given in clear; False when there is none."""
    return await _revoke(session, ApiKey.key_hash == hash_key(key))


async def revoke_api_key_by_id(session: WriteSession, key_id: uuid.UUID) -> bool:
    """Revoke a live key by its id (as ``key_listing`` shows it); False when there is none."""
    return await _revoke(session, ApiKey.id == key_id)


KEYS_CHANNEL = "paystream_api_keys"
"""Where a revocation is announced (the key's hash), on commit, to every API process's cache
of keys (``services.auth``)."""

_NOTIFY = text("SELECT pg_notify(:channel, :key_hash)")


async def _revoke(session: WriteSession, which: ColumnElement[bool]) -> bool:
    revoked = (await session.execute(
        update(ApiKey).where(which, ApiKey.revoked_at.is_(None)).values(revoked_at=text("now()"))
        .returning(ApiKey.key_hash)
    )).scalars().all()
    for key_hash in revoked:
        # In the revoking transaction: heard on its commit, and never if it rolls back.
        await session.execute(_NOTIFY, {"channel": KEYS_CHANNEL, "key_hash": key_hash})
    return bool(revoked)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key as an operator may see it: never the key, only its first characters."""

    id: uuid.UUID
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


async def key_listing(session: ReadSession | WriteSession, partner_id: uuid.UUID) -> list[KeyInfo]:
    """The partner's keys, oldest first, revoked ones included."""
    rows = await session.execute(
        select(ApiKey.id, ApiKey.prefix, ApiKey.scopes, ApiKey.created_at, ApiKey.revoked_at)
        .where(ApiKey.partner_id == partner_id).order_by(ApiKey.created_at, ApiKey.id)
    )
    return [KeyInfo(id=r[0], prefix=r[1], scopes=tuple(r[2]), created_at=r[3], revoked_at=r[4])
            for r in rows]


async def ensure_partner(session: WriteSession, name: str) -> uuid.UUID:
    """The partner named ``name``, created if missing (used by the dev seed)."""
    await session.execute(
        insert(Partner).values(id=uuid.uuid4(), name=name).on_conflict_do_nothing(index_elements=["name"])
    )
    found = await partner_id_by_name(session, name)
    assert found is not None
    return found


async def live_key_count(session: ReadSession | WriteSession, partner_name: str) -> int:
    """How many unrevoked keys the partner named ``partner_name`` has (0 if it does not exist)."""
    return int((await session.execute(
        select(func.count()).select_from(ApiKey).join(Partner, Partner.id == ApiKey.partner_id)
        .where(Partner.name == partner_name, ApiKey.revoked_at.is_(None))
    )).scalar_one())
