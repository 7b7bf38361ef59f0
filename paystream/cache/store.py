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
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
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


class VersionedCache:
    """Cache-aside store for versioned entities; every method is failure-tolerant."""

    def __init__(self, settings: RedisSettings, *, redis: Redis | None = None) -> None:
        self._settings = settings
        # Each command bounded without redis-py's socket timeout, which can swallow a
        # cancellation on Python 3.11 (cache/client.py).
        self.redis = redis or redis_client(settings.url, settings.socket_timeout_s)
        self._cas = self.redis.register_script(_CAS)
        self._breaker = Breaker(settings.retry_after_failure_s)
        # Writes that failed while Redis was unreachable, replayed once it answers again (the
        # compare-and-set makes a late replay harmless). Without this, an entry written just
        # before an outage would keep its older version until its TTL ran out.
        self._unwritten: dict[tuple[str, object], tuple[int, Payload, int]] = {}
        self.max_unwritten = 100_000
        self.dropped = 0  # writes not kept because the buffer was full (their TTL is the backstop)
        self._replay_lock = asyncio.Lock()
        self._life: str | None = None  # the run_id of the Redis server last seen
        self.hits = 0
        self.misses = 0
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
        if (self._unwritten or self._replay_lock.locked()) and await self.flush_unwritten():
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
            if not self._unwritten or not self.available:
                return len(self._unwritten)
            held, self._unwritten = self._unwritten, {}
            by_kind: dict[tuple[str, int], dict[object, Entry]] = {}
            for (kind, key), (version, payload, ttl_s) in held.items():
                by_kind.setdefault((kind, ttl_s), {})[key] = (version, payload)
            for (kind, ttl_s), entries in by_kind.items():
                await self.put_many(kind, entries, ttl_s)
            return len(self._unwritten)

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
