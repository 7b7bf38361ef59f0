"""Versioned cache entries in Redis, read with one MGET and written with an atomic
compare-and-set, so an older version never replaces a newer one.

An entry is ``"<version>|<json>"`` under ``<kind>:<id>``, with a TTL on every key. When Redis
fails, the store answers "miss" and skips writes for a moment (a circuit breaker), so reads go
to the database and clients never see a cache error; it tries Redis again after
``retry_after_failure_s``, without a restart.

Writes that could not be made during an outage are kept and replayed before the next read is
served, so a reader never sees an entry older than one it was shown from the database during
the outage. A Redis restart between two commands raises no error (the client reconnects
quietly) but empties the cache: each read also fetches a key holding the server's ``run_id``,
and a changed or missing one counts as an outage (``failures``), which is what tells the read
path to hold reads on the primary until the replicas replay past it.

Account pages (which payments a page of an account lists, not the payments themselves) are
kept under the account's page generation: a random token under ``pagegen:<account>`` that
every change to the account's list replaces (:meth:`VersionedCache.bump_pages`). A page is
read with its account's generation in one MGET and shown only when it was stored under the
current one; it is stored only if the generation is still the one read before its SQL
statement (compared in Redis), so a page read before a change can never be stored after it.
Tokens never repeat, so a generation that expired and came back cannot revive an old page.
Bumps that fail during an outage are kept and replayed before the next read, like writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..config import RedisSettings
from .breaker import Breaker
from .client import redis_client

log = logging.getLogger(__name__)

T = TypeVar("T")

# Holds the run_id of the Redis server that wrote it (no TTL): absent or different after a
# restart. Fetched in the same MGET as the entries, so it costs no round trip.
LIFE_KEY = "paystream:redis:run_id"
# An entry's payload: its JSON (as the entities encode it) or a mapping encoded here.
Payload = dict[str, Any] | bytes
Entry = tuple[int, Payload]  # (version, payload)
PAGE_GENERATION = "pagegen"
PAGE = "page"

# KEYS: the entries; ARGV[1]: ttl seconds; then per key a version and a payload.
# Replaces an entry only when absent or older; always (re)arms the TTL of what it wrote.
_CAS = """
local ttl = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i])
  local current = redis.call('GET', key)
  local current_version = -1
  if current then
    current_version = tonumber(string.match(current, '^(%d+)|')) or -1
  end
  if version > current_version then
    redis.call('SET', key, ARGV[2 * i] .. '|' .. ARGV[2 * i + 1], 'EX', ttl)
    written = written + 1
  end
end
return written
"""

# KEYS[1]: the account's page generation, KEYS[2]: the page; ARGV[1]: the generation read
# before the page's statement ("" when there was none), ARGV[2]: the token that starts one
# when there is none, ARGV[3]: the page, ARGV[4]: ttl seconds. Stores the page only if the
# generation is unchanged since it was read; returns 1 when it did.
_STORE_PAGE = """
local current = redis.call('GET', KEYS[1])
local generation = ARGV[1]
if current == false then
  if generation ~= '' then return 0 end
  generation = ARGV[2]
  redis.call('SET', KEYS[1], generation, 'EX', ARGV[4])
elseif current ~= generation then
  return 0
end
redis.call('SET', KEYS[2], generation .. '|' .. ARGV[3], 'EX', ARGV[4])
return 1
"""


@dataclass(frozen=True, slots=True)
class PageLookup:
    """An account page as the cache has it: the generation to store a page under, and the
    page's payload when one is stored under the current generation."""

    generation: str
    payload: bytes | None


def _token() -> str:
    return secrets.token_hex(8)


class VersionedCache:
    """Cache-aside store for versioned entities; every method is failure-tolerant."""

    def __init__(self, settings: RedisSettings, *, redis: Redis | None = None) -> None:
        self._settings = settings
        # Each command bounded without redis-py's socket timeout, which can swallow a
        # cancellation on Python 3.11 (cache/client.py).
        self.redis = redis or redis_client(settings.url, settings.socket_timeout_s)
        self._cas = self.redis.register_script(_CAS)
        self._store_page = self.redis.register_script(_STORE_PAGE)
        self._breaker = Breaker(settings.retry_after_failure_s)
        # Writes that failed while Redis was unreachable, replayed once it answers again (the
        # compare-and-set makes a late replay harmless). Without this, an entry written just
        # before an outage would keep its older version until its TTL ran out.
        self._unwritten: dict[tuple[str, object], tuple[int, Payload, int]] = {}
        self.max_unwritten = 100_000
        self.dropped = 0  # writes not kept because the buffer was full (their TTL is the backstop)
        # Accounts whose page generation could not be replaced while Redis was unreachable,
        # with the pages' TTL: replayed with the writes (bounded like them).
        self._unbumped: dict[uuid.UUID, int] = {}
        self._replay_lock = asyncio.Lock()
        self._life: str | None = None  # the run_id of the Redis server last seen
        self.hits = 0
        self.misses = 0
        self.page_hits = 0
        self.page_misses = 0
        # Outages so far (errors, and restarts seen by their run_id): a change means Redis may
        # have missed writes or come back empty.
        self.failures = 0

    @property
    def available(self) -> bool:
        return self._breaker.available

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._breaker.failed("the cache (serving from the database)", exc)

    async def get_many(self, kind: str, ids: Sequence[object],
                       decode: Callable[[dict[str, Any]], T]) -> dict[object, T]:
        """One MGET for all ids; misses (and a Redis outage) are simply absent. Writes kept
        during an outage are replayed first: until they are, every id is a miss."""
        if not ids or not self.available:
            self.misses += len(ids)
            return {}
        if self._replay_pending() and await self.flush_unwritten():
            self.misses += len(ids)
            return {}
        try:
            values = await self.redis.mget([*(f"{kind}:{i}" for i in ids), LIFE_KEY])
            await self._check_life(values.pop())
        except (RedisError, OSError) as exc:
            self._failed(exc)
            self.misses += len(ids)
            return {}
        found: dict[object, T] = {}
        for key, value in zip(ids, values, strict=True):
            if value is not None:
                raw = value.encode() if isinstance(value, str) else value
                _, _, payload = raw.partition(b"|")
                found[key] = decode(json.loads(payload))
        self.hits += len(found)
        self.misses += len(ids) - len(found)
        return found

    def _replay_pending(self) -> bool:
        return bool(self._unwritten or self._unbumped or self._replay_lock.locked())

    async def get_page(self, account: uuid.UUID, shape: str) -> PageLookup | None:
        """The account's current page generation and, if one is stored under it, the page of
        that shape; None when the cache cannot vouch for it (Redis failed, or writes kept
        during an outage are still waiting)."""
        if not self.available or (self._replay_pending() and await self.flush_unwritten()):
            return None
        try:
            generation, page, life = await self.redis.mget(
                f"{PAGE_GENERATION}:{account}", f"{PAGE}:{account}:{shape}", LIFE_KEY)
            await self._check_life(life)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        current = generation.decode() if isinstance(generation, bytes) else (generation or "")
        if page is not None and current:
            raw = page.encode() if isinstance(page, str) else page
            stored, _, payload = raw.partition(b"|")
            if stored.decode() == current:
                self.page_hits += 1
                return PageLookup(current, payload)
        self.page_misses += 1
        return PageLookup(current, None)

    async def put_page(self, account: uuid.UUID, shape: str, generation: str, payload: bytes,
                       ttl_s: int) -> bool:
        """Store the page if the account's generation is still ``generation`` (as
        :meth:`get_page` gave it before the page was read); whether it was stored."""
        if not self.available:
            return False
        try:
            return bool(await self._store_page(
                keys=[f"{PAGE_GENERATION}:{account}", f"{PAGE}:{account}:{shape}"],
                args=[generation, _token(), payload, ttl_s]))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False

    async def bump_pages(self, accounts: Collection[uuid.UUID], ttl_s: int) -> None:
        """The accounts' lists changed: every page stored for them is stale from now on."""
        if not accounts:
            return
        if self.available:
            if await self._set_generations(accounts, ttl_s):
                return
            self._breaker.close()  # dead pooled connections after a restart: once more
            if await self._set_generations(accounts, ttl_s):
                return
        for account in accounts:
            if account in self._unbumped or len(self._unbumped) < self.max_unwritten:
                self._unbumped[account] = ttl_s
            else:
                # Its pages' TTL is the backstop, as for writes.
                self.dropped += 1

    async def _set_generations(self, accounts: Collection[uuid.UUID], ttl_s: int) -> bool:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for account in accounts:
                    pipe.set(f"{PAGE_GENERATION}:{account}", _token(), ex=ttl_s)
                await pipe.execute()
            return True
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False

    async def _check_life(self, stored: bytes | str | None) -> None:
        """Compare the run_id stored in Redis with the one last seen; on the first read, or
        when the key is gone (a restart, a flush), read the server's and store it. A different
        server life than the one seen before counts as an outage."""
        life = stored.decode() if isinstance(stored, bytes) else stored
        if life is not None and life == self._life:
            return
        if life is None:
            life = str((await self.redis.info("server"))["run_id"])
            await self.redis.set(LIFE_KEY, life)  # every process of this server writes the same
        if self._life is not None and life != self._life:
            self.failures += 1
            log.warning("redis restarted (a new run_id): its entries are gone")
        self._life = life

    async def put_many(self, kind: str, entries: Mapping[Any, Entry],
                       ttl_s: int) -> int:
        """Compare-and-set each (version, payload); returns how many were written. Entries
        that cannot be written now are kept and replayed by :meth:`flush_unwritten`."""
        if not entries:
            return 0
        if not self.available:
            self._keep(kind, entries, ttl_s)
            return 0
        written = await self._cas_many(kind, entries, ttl_s)
        if written is None:
            # After a Redis restart every pooled connection is dead and fails once; a second
            # attempt gets a fresh connection. Only if that fails too is Redis really down.
            self._breaker.close()
            written = await self._cas_many(kind, entries, ttl_s)
        if written is None:
            self._keep(kind, entries, ttl_s)
            return 0
        return written

    def _keep(self, kind: str, entries: Mapping[Any, Entry],
              ttl_s: int) -> None:
        for key, (version, payload) in entries.items():
            held = self._unwritten.get((kind, key))
            if held is not None and held[0] >= version:
                continue
            if held is None and len(self._unwritten) >= self.max_unwritten:
                # Bounded: a key not held yet is dropped (its TTL is the backstop); a newer
                # version of a key held replaces it, whatever the size.
                self.dropped += 1
                continue
            self._unwritten[(kind, key)] = (version, payload, ttl_s)

    async def flush_unwritten(self) -> int:
        """Replay writes kept during an outage; returns how many are still waiting. Reads
        arriving meanwhile wait for it (they would otherwise be served the older entries)."""
        async with self._replay_lock:
            if not (self._unwritten or self._unbumped) or not self.available:
                return len(self._unwritten) + len(self._unbumped)
            bumps, self._unbumped = self._unbumped, {}
            for ttl_s in set(bumps.values()):
                await self.bump_pages([a for a, t in bumps.items() if t == ttl_s], ttl_s)
            held, self._unwritten = self._unwritten, {}
            by_kind: dict[tuple[str, int], dict[object, Entry]] = {}
            for (kind, key), (version, payload, ttl_s) in held.items():
                by_kind.setdefault((kind, ttl_s), {})[key] = (version, payload)
            for (kind, ttl_s), entries in by_kind.items():
                await self.put_many(kind, entries, ttl_s)
            return len(self._unwritten) + len(self._unbumped)

    async def _cas_many(self, kind: str, entries: Mapping[Any, Entry],
                        ttl_s: int) -> int | None:
        keys = [f"{kind}:{i}" for i in entries]
        args: list[str | int | bytes] = [ttl_s]
        for version, payload in entries.values():
            args += [version, payload if isinstance(payload, bytes)
                     else json.dumps(payload, separators=(",", ":"), default=str)]
        try:
            return int(await self._cas(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None

    async def delete(self, *keys: str) -> None:
        if not keys or not self.available:
            return
        try:
            await self.redis.delete(*keys)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except (RedisError, OSError) as exc:
            # Shutting down: a connection that does not close in time is dropped anyway.
            log.warning("redis connections not closed cleanly (%s)", type(exc).__name__)
