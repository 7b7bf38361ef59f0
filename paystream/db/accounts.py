"""Accounts: batched reads for the DataLoaders, creation for the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BindParameter, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from .engine import ReadSession, WriteSession
from .models import Account


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account as read, detached from any session (safe to cache)."""

    id: uuid.UUID
    partner_id: uuid.UUID
    name: str
    currency: str
    balance_minor: int
    version: int
    created_at: datetime
    updated_at: datetime


def uuid_array(ids: Sequence[uuid.UUID], name: str = "ids") -> BindParameter[list[uuid.UUID]]:
    """One array parameter, so the statement text (and its prepared plan) is the same for
    any number of ids."""
    return bindparam(name, sorted(set(ids)), type_=ARRAY(UUID(as_uuid=True)))  # type: ignore[arg-type]


_COLUMNS = (
    Account.id,
    Account.partner_id,
    Account.name,
    Account.currency,
    Account.balance_minor,
    Account.version,
    Account.created_at,
    Account.updated_at,
)


# Built once (see payments.insert_pending); the ids are bound at execution.
_BY_IDS = select(*_COLUMNS).where(Account.id == any_(uuid_array([])))


async def accounts_by_ids(
    session: ReadSession | WriteSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, AccountRow]:
    """One statement (``WHERE id = ANY(...)``) for any number of ids."""
    if not ids:
        return {}
    rows = await session.execute(_BY_IDS, {"ids": sorted(set(ids))})
    return {row[0]: AccountRow(*row) for row in rows}


async def create_account(
    session: WriteSession, *, partner_id: uuid.UUID, name: str, currency: str, balance_minor: int
) -> uuid.UUID:
    account_id = uuid.uuid4()
    session.add(
        Account(
            id=account_id,
            partner_id=partner_id,
            name=name,
            currency=currency,
            balance_minor=balance_minor,
            version=1,
        )
    )
    await session.flush()
    return account_id
