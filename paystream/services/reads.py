"""The read side: Redis first (one MGET per entity type), then one SQL statement on a replica
for the misses, then the primary for rows the replica does not have yet. Concurrent reads of
one id share one lookup and one database read (single-flight); what the database returns is
written back to the cache with its version, so an older row never replaces a newer cached one.

Read-your-writes while a replica lags comes from the cache: the worker and the status stream
put each committed version there. When Redis cannot be reached there is nothing to tell a
lagging replica's row from a current one, so reads go to the primary. When it answers again
it may have come back empty, so replicas are trusted again only once they have replayed the
primary's WAL as it stood at that moment (everything a caller could have been shown during
the outage). An outage costs primary load, never a balance or status going backwards."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ..cache import (
    ACCOUNT,
    PAYMENT,
    Entry,
    SingleFlight,
    VersionedCache,
    account_entry,
    account_from,
    payment_entry,
    payment_from,
)
from ..config import Settings
from ..db import Database, ReadSession
from ..db.accounts import accounts_by_ids
from ..db.payments import NO_FILTER, PaymentFilter, account_page, payments_by_ids
from ..db.refunds import RefundRow, refunds_by_ids, refunds_of_payments
from ..db.statements import EntryRow, account_version, balance_at, entries_page
from ..domain.entities import AccountParty, AccountRow, PaymentRow
from ..domain.errors import Unavailable

log = logging.getLogger(__name__)

Row = TypeVar("Row", AccountRow, PaymentRow)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PaymentPage:
    """A page of payments as shown, whether more follow, and the last row of its range (the
    page's end for the cursor, shown or not)."""

    rows: list[PaymentRow]
    more: bool
    last: PaymentRow | None

    @classmethod
    def of(cls, fetched: list[PaymentRow], limit: int, where: PaymentFilter) -> PaymentPage:
        window = fetched[:limit]
        shown = window if where.status is None else [r for r in window
                                                     if r.status == where.status]
        return cls(rows=shown, more=len(fetched) > limit, last=window[-1] if window else None)


def _page_shape(limit: int, before: tuple[datetime, uuid.UUID] | None,
                viewer: uuid.UUID | None) -> str:
    """What names a page among the account's: its size, its start and who may see it."""
    start = f"{before[0].isoformat()}/{before[1]}" if before else "-"
    return f"{limit}:{start}:{viewer or '-'}"


def _encode_page(ids: Sequence[uuid.UUID], more: bool) -> bytes:
    return (("+" if more else "-") + " ".join(str(i) for i in ids)).encode()


def _decode_page(payload: bytes) -> tuple[list[uuid.UUID], bool]:
    text = payload.decode()
    return [uuid.UUID(i) for i in text[1:].split()], text[0] == "+"


class Reader:
    """Batch reads used by the DataLoaders."""

    def __init__(self, db: Database, cache: VersionedCache | None = None,
                 settings: Settings | None = None) -> None:
        self._db = db
        self.cache = cache
        self._ttl = settings.redis if settings else None
        self._account_flight: SingleFlight[uuid.UUID, AccountRow] = SingleFlight()
        self._payment_flight: SingleFlight[uuid.UUID, PaymentRow] = SingleFlight()
        self._page_flight: SingleFlight[tuple[uuid.UUID, str, str],
                                        tuple[list[uuid.UUID], bool]] = SingleFlight()
        self.db_reads = 0
        # Accounts' owners and currencies, kept by this process (least recently used last out).
        self._parties: OrderedDict[uuid.UUID, AccountParty] = OrderedDict()
        self.max_parties = 100_000
        # After a Redis outage: the primary's WAL position the replicas must replay before
        # their rows are trusted again ("" while it is being read).
        self._failures_seen = 0
        self._fence: str | None = None
        self._fence_checked = 0.0
        self.fence_check_interval_s = 0.5

    async def accounts(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, AccountRow]:
        return await self._read(
            ids, ACCOUNT, account_from, account_entry, accounts_by_ids, self._account_flight,
            self._ttl.account_ttl_s if self._ttl else 3600,
        )

    async def account_parties(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, AccountParty]:
        """The owners and currencies of the accounts that exist among ``ids``: from this
        process's memory, read (as :meth:`accounts` reads) only for ids it has not seen.
        What an account's party says never changes, so nothing has to invalidate it; an id
        not found is not remembered (the account may be created a moment later)."""
        parties = self._parties
        found: dict[uuid.UUID, AccountParty] = {}
        unknown = []
        for account_id in ids:
            party = parties.get(account_id)
            if party is None:
                unknown.append(account_id)
            else:
                parties.move_to_end(account_id)
                found[account_id] = party
        if unknown:
            for account_id, row in (await self.accounts(unknown)).items():
                found[account_id] = parties[account_id] = AccountParty.of(row)
            while len(parties) > self.max_parties:
                parties.popitem(last=False)
        return found

    async def payments(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, PaymentRow]:
        return await self._read(
            ids, PAYMENT, payment_from, payment_entry, payments_by_ids, self._payment_flight,
            self._ttl.payment_ttl_s if self._ttl else 86400,
        )

    async def _read(
        self,
        ids: Sequence[uuid.UUID],
        kind: str,
        decode: Callable[[dict[str, Any]], Row],
        encode: Callable[[Row], Entry],
        query: Callable[[ReadSession, Sequence[uuid.UUID]], Awaitable[dict[uuid.UUID, Row]]],
        flight: SingleFlight[uuid.UUID, Row],
        ttl_s: int,
    ) -> dict[uuid.UUID, Row]:
        # The flight covers the cache lookup too: a request asking for a key another one is
        # loading joins it before asking Redis, so a miss answered late by Redis (after the
        # first read has filled the entry) cannot start a second database read.

        async def load(keys: list[uuid.UUID]) -> dict[uuid.UUID, Row]:
            found: dict[uuid.UUID, Row] = {}
            if self.cache is not None:
                found.update(await self.cache.get_many(kind, keys, decode))  # type: ignore[arg-type]  # keys are the UUIDs asked for
            misses = [k for k in keys if k not in found]
            if not misses:
                return found
            self.db_reads += 1
            primary = not await self.replicas_trusted()
            rows = await self._db.read(lambda s: query(s, misses), primary=primary)
            missing = [] if primary else [k for k in misses if k not in rows]
            if missing:
                # Written a moment ago and not yet replayed on the replica.
                rows.update(await self._db.read(lambda s: query(s, missing), primary=True))
            if self.cache is not None and rows:
                await self.cache.put_many(kind, {k: encode(r) for k, r in rows.items()}, ttl_s)
            found.update(rows)
            return found

        return await flight.load_many(ids, load)

    def _cache_answers(self) -> bool:
        """Whether the cache can vouch for freshness: Redis answered its last command."""
        return self.cache is not None and self.cache.available

    @property
    def replicas_fenced(self) -> bool:
        """Whether reads are held on the primary until the replicas replay past an outage."""
        return self._fence is not None

    async def replicas_trusted(self) -> bool:
        """Whether a replica's rows may be served: the cache answers, and since its last
        outage the replicas have replayed what the primary had when it came back."""
        if not self._cache_answers():
            return False
        assert self.cache is not None
        if self.cache.failures != self._failures_seen:
            self._failures_seen = self.cache.failures
            self._fence = ""  # other reads go to the primary meanwhile
            try:
                self._fence = await self._db.primary_wal_position()
            except Unavailable:
                # The primary is down too: the replicas are all there is.
                log.warning("no WAL position from the primary after a Redis outage; "
                            "trusting the replicas")
                self._fence = None
            self._fence_checked = 0.0
        if self._fence is None:
            return True
        now = time.monotonic()
        if not self._fence or now - self._fence_checked < self.fence_check_interval_s:
            return False
        self._fence_checked = now
        if await self._db.replicas_replayed(self._fence):
            self._fence = None
            return True
        return False

    async def remember_payment(self, row: PaymentRow) -> None:
        """Put a payment this process just wrote into the cache (read-your-writes)."""
        if self.cache is not None and self._ttl is not None:
            await self.cache.put_many(PAYMENT, {row.id: payment_entry(row)}, self._ttl.payment_ttl_s)

    async def remember_payments(self, rows: Sequence[PaymentRow],
                                encoded: Sequence[bytes] | None = None) -> None:
        """The same for many payments, in one cache write (``encoded``: their JSON, made
        already with ``encode_payment``)."""
        if rows and self.cache is not None and self._ttl is not None:
            entries = ({row.id: (row.version, raw) for row, raw in zip(rows, encoded, strict=True)}
                       if encoded is not None else {row.id: payment_entry(row) for row in rows})
            await self.cache.put_many(PAYMENT, entries, self._ttl.payment_ttl_s)

    async def refunds(self, payment_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[RefundRow]]:
        """Each payment's refunds, oldest first, in one statement on the primary: a refund
        accepted or posted a moment ago is listed whatever a replica's lag (refunds are not
        cached; the payment's ``refunded_minor`` is, and must agree with the list)."""
        return await self._db.read(lambda s: refunds_of_payments(s, payment_ids), primary=True)

    async def refunds_by_ids(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, RefundRow]:
        """Refunds by id (a statement's REFUND entries), from the primary like ``refunds``."""
        return await self._db.read(lambda s: refunds_by_ids(s, ids), primary=True)

    async def remember_account(self, row: AccountRow) -> None:
        """Put an account this process just wrote into the cache (read-your-writes)."""
        if self.cache is not None and self._ttl is not None:
            await self.cache.put_many(ACCOUNT, {row.id: account_entry(row)}, self._ttl.account_ttl_s)

    async def account_page(self, account_id: uuid.UUID, *, limit: int,
                           before: tuple[datetime, uuid.UUID] | None,
                           viewer: uuid.UUID | None,
                           where: PaymentFilter = NO_FILTER) -> PaymentPage:
        """Up to ``limit`` payments after ``before``, newest first, each at its newest known
        version (never older than a status the caller may already have been shown).

        An unfiltered page comes from the cache when it holds one under the account's current
        page generation: the ids it lists, then the payments by id (one MGET each, no SQL).
        Otherwise it is one statement on the primary (``limit`` + 1 rows, to know whether more
        follow), so that a page stored for others to be shown lacks no payment committed
        before it was read; it is stored only if no change to the list came meanwhile.
        Filtered pages, and every page while the cache cannot vouch for the replicas, are
        read as :meth:`_page_read` says."""
        if (where != NO_FILTER or self.cache is None or self._ttl is None
                or not await self.replicas_trusted()):
            return await self._page_read(account_id, limit=limit, before=before, viewer=viewer,
                                         where=where)
        shape = _page_shape(limit, before, viewer)
        lookup = await self.cache.get_page(account_id, shape)
        if lookup is None or not self._cache_answers():
            return await self._page_read(account_id, limit=limit, before=before, viewer=viewer,
                                         where=where)
        if lookup.payload is not None:
            ids, more = _decode_page(lookup.payload)
        else:
            ids, more = await self._stored_page(account_id, shape, lookup.generation,
                                                limit=limit, before=before, viewer=viewer)
        # Each payment at its newest version, the cache's (written there by every commit);
        # a missing entry is read by id.
        found = await self.payments(ids)
        rows = [found[i] for i in ids if i in found]  # payments are never deleted
        return PaymentPage(rows=rows, more=more, last=rows[-1] if rows else None)

    async def _stored_page(self, account_id: uuid.UUID, shape: str, generation: str, *,
                           limit: int, before: tuple[datetime, uuid.UUID] | None,
                           viewer: uuid.UUID | None) -> tuple[list[uuid.UUID], bool]:
        """The page's ids read on the primary and stored under ``generation`` unless the list
        changed meanwhile; concurrent misses of one page share one read."""
        cache, ttl = self.cache, self._ttl
        assert cache is not None and ttl is not None
        key = (account_id, shape, generation)

        async def load(keys: list[tuple[uuid.UUID, str, str]]) -> dict[
                tuple[uuid.UUID, str, str], tuple[list[uuid.UUID], bool]]:
            self.db_reads += 1
            fetched = await self._db.read(
                lambda s: account_page(s, account_id, limit=limit + 1, before=before,
                                       viewer=viewer), primary=True)
            window = fetched[:limit]
            if window:
                await cache.put_many(PAYMENT, {r.id: payment_entry(r) for r in window},
                                     ttl.payment_ttl_s)
            ids, more = [r.id for r in window], len(fetched) > limit
            await cache.put_page(account_id, shape, generation, _encode_page(ids, more),
                                 ttl.page_ttl_s)
            return {keys[0]: (ids, more)}

        return (await self._page_flight.load_many([key], load))[key]

    async def pages_changed(self, accounts: Iterable[uuid.UUID]) -> None:
        """These accounts' lists changed (a payment naming them was committed): their cached
        pages are stale from now on, for every process."""
        if self.cache is not None and self._ttl is not None:
            await self.cache.bump_pages(set(accounts), self._ttl.page_ttl_s)

    async def _page_read(self, account_id: uuid.UUID, *, limit: int,
                         before: tuple[datetime, uuid.UUID] | None,
                         viewer: uuid.UUID | None, where: PaymentFilter) -> PaymentPage:
        """A page read without the page cache: one SQL statement (``limit`` + 1 rows) on a
        replica, then one MGET: where the cache holds a newer version of a payment than the
        replica (a status the caller may already have seen), the newer one is shown. Rows the
        cache lacks or holds older are written back. Under a status filter, a payment whose
        newer version has left that status is left out: the page may then be shorter than
        asked, and its end is still the last row of its range (``PaymentPage.last``), so the
        next page starts past it. On the primary while the cache cannot vouch for replicas."""
        async def page(primary: bool) -> list[PaymentRow]:
            return await self._db.read(
                lambda s: account_page(s, account_id, limit=limit + 1, before=before,
                                       viewer=viewer, where=where),
                primary=primary,
            )

        if self.cache is None or self._ttl is None or not await self.replicas_trusted():
            return PaymentPage.of(await page(primary=True), limit, where)
        rows = await page(primary=False)
        if not rows:
            return PaymentPage.of(rows, limit, where)
        cached = await self.cache.get_many(PAYMENT, [r.id for r in rows], payment_from)
        if not self._cache_answers():
            # Redis failed just now: the replica's rows may lag.
            return PaymentPage.of(await page(primary=True), limit, where)
        newest: list[PaymentRow] = []
        stale: dict[uuid.UUID, PaymentRow] = {}
        for row in rows:
            known = cached.get(row.id)
            if known is not None and known.version >= row.version:
                newest.append(known)
            else:
                newest.append(row)
                stale[row.id] = row
        if stale:
            await self.cache.put_many(
                PAYMENT, {i: payment_entry(r) for i, r in stale.items()}, self._ttl.payment_ttl_s
            )
        return PaymentPage.of(newest, limit, where)

    async def _fresh_read(self, account: AccountRow,
                          work: Callable[[ReadSession], Awaitable[T]]) -> T:
        """``work`` on a replica that has replayed the account at least to ``account.version``
        (the newest state the caller may have been shown: the cache's), else on the primary.
        Entries are append-only and written with the account's new version in one
        transaction, so a replica at that version has every entry the caller could know of."""
        async def checked(session: ReadSession) -> list[T]:
            version = await account_version(session, account.id)
            if version is None or version < account.version:
                return []  # not replayed that far yet
            return [await work(session)]  # read after the version: a snapshot as new or newer

        if await self.replicas_trusted():
            found = await self._db.read(checked)
            if found:
                return found[0]
        return await self._db.read(work, primary=True)

    async def entries_page(self, account: AccountRow, *, limit: int,
                           before: tuple[datetime, int] | None, from_at: datetime | None,
                           to_at: datetime | None) -> list[EntryRow]:
        """A statement page, newest first, from a replica that is fresh enough (else the
        primary): never older than the balance the caller may already have seen."""
        return await self._fresh_read(account, lambda s: entries_page(
            s, account.id, limit=limit, before=before, from_at=from_at, to_at=to_at))

    async def balance_at(self, account: AccountRow, at: datetime) -> int:
        """The posted balance after the last entry at or before ``at`` (one index probe)."""
        return await self._fresh_read(account, lambda s: balance_at(s, account.id, at))
