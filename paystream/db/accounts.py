"""Accounts: batched reads for the DataLoaders, the idempotent insert of ``createAccount``,
a partner's accounts page by page, creation for the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BindParameter, any_, bindparam, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert

from ..domain.entities import AccountRow, field_names
from ..domain.metadata import Metadata, metadata_json
from .engine import ReadSession, WriteSession
from .models import Account

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
MAX_UUID = uuid.UUID(int=(1 << 128) - 1)
"""Past the newest (created_at, id): the position before a first page."""


def uuid_array(ids: Sequence[uuid.UUID], name: str = "ids") -> BindParameter[list[uuid.UUID]]:
    """One array parameter, so the statement text (and its prepared plan) is the same for
    any number of ids."""
    return bindparam(name, sorted(set(ids)), type_=ARRAY(UUID(as_uuid=True)))  # type: ignore[arg-type]  # SQLAlchemy's ARRAY stub wants a TypeEngine of the list


_COLUMNS = tuple(getattr(Account, name) for name in field_names(AccountRow))


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


# Built once; on a conflict of (partner, idempotency key) nothing is inserted and the existing
# account is read back.
_INSERT_KEYED = (
    insert(Account)
    .values(id=bindparam("id"), partner_id=bindparam("partner_id"), name=bindparam("name"),
            currency=bindparam("currency"), balance_minor=0, version=1,
            idempotency_key=bindparam("idempotency_key"), request_hash=bindparam("request_hash"),
            created_at=bindparam("now"), updated_at=bindparam("now"),
            metadata_entries=bindparam("metadata_entries"))
    .on_conflict_do_nothing(constraint="accounts_partner_idempotency_key")
    .returning(*_COLUMNS)
)
_BY_KEY = select(*_COLUMNS, Account.request_hash).where(
    Account.partner_id == bindparam("partner_id"),
    Account.idempotency_key == bindparam("idempotency_key"),
)


@dataclass(frozen=True, slots=True)
class KeyedAccount:
    """The account stored under an idempotency key, the hash of the request that made it, and
    whether this call created it."""

    row: AccountRow
    request_hash: str
    created: bool


async def insert_keyed(
    session: WriteSession, *, partner_id: uuid.UUID, idempotency_key: str, request_hash: str,
    name: str, currency: str, now: datetime, metadata: Metadata = (),
) -> KeyedAccount:
    """A zero-balance account unless (partner, idempotency key) exists already. Concurrent
    callers with one key serialize on the unique constraint: exactly one creates it."""
    params = {"id": uuid.uuid4(), "partner_id": partner_id, "name": name, "currency": currency,
              "idempotency_key": idempotency_key, "request_hash": request_hash, "now": now,
              "metadata_entries": metadata_json(metadata)}
    created = (await session.execute(_INSERT_KEYED, params)).first()
    if created is not None:
        return KeyedAccount(AccountRow(*created), request_hash, True)
    existing = (await session.execute(_BY_KEY, params)).one()
    return KeyedAccount(AccountRow(*existing[:-1]), str(existing[-1]), False)


_PAGE = (
    select(*_COLUMNS)
    .where(Account.partner_id == bindparam("partner_id"),
           tuple_(Account.created_at, Account.id)
           < tuple_(bindparam("before_at"), bindparam("before_id")))
    .order_by(Account.created_at.desc(), Account.id.desc())
    .limit(bindparam("limit"))
)


async def partner_page(
    session: ReadSession | WriteSession, partner_id: uuid.UUID, *, limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[AccountRow]:
    """Up to ``limit`` of the partner's accounts, newest first, strictly after the cursor
    ``before`` (created_at, id); walks ``accounts_partner_page_idx``."""
    before_at, before_id = before or (FAR_FUTURE, MAX_UUID)
    rows = await session.execute(_PAGE, {"partner_id": partner_id, "before_at": before_at,
                                         "before_id": before_id, "limit": limit})
    return [AccountRow(*row) for row in rows]
