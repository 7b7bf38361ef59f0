"""Operator actions on the ledger: funding an account and proving the ledger sound."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from ..cache import ACCOUNT, VersionedCache, account_entry
from ..config import Settings
from ..db import Database
from ..db.ledger import FundingPosting, LedgerReport, fund, verify
from ..domain.errors import BadUserInput, NotFound
from ..domain.money import Money

_CURRENCY = text("SELECT currency FROM accounts WHERE id = :id")
# The checks must agree with each other: one snapshot for all of them.
_SNAPSHOT = text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")


def parse_account_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise BadUserInput("ACCOUNT_ID must be an account id (a uuid)", field="account") from None


async def fund_account(db: Database, cache: VersionedCache | None, settings: Settings,
                       account_id: uuid.UUID, amount: str) -> FundingPosting:
    """Add ``amount`` (a decimal string in the account's currency) to an account, as a FUNDING
    posting from the settlement account of its currency. The cache is updated after the
    commit (a versioned write), so readers see the new balance at once."""
    async with db.write_session() as session:
        currency = (await session.execute(_CURRENCY, {"id": account_id})).scalar()
        if currency is None:
            raise NotFound("no such account")
        money = Money.parse(amount, str(currency), field="amount")
        posting = await fund(session, account_id, money.minor)
    if cache is not None:
        await cache.put_many(ACCOUNT, {posting.account.id: account_entry(posting.account)},
                             settings.redis.account_ttl_s)
    return posting


async def verify_ledger(db: Database, settings: Settings) -> LedgerReport:
    """Every check of :func:`paystream.db.ledger.verify`, on the primary, in one snapshot,
    without the statement timeout that bounds requests: each check reads every row of its
    tables (the bench's drain of 20,000 payments ran past the 10 s default)."""
    async with db.write_session() as session:
        await session.execute(_SNAPSHOT)
        await session.execute(text("SET LOCAL statement_timeout = 0"))
        return await verify(session, requested_topic=settings.kafka.requested_topic)
