"""Per-key rate limits: a token bucket per (key, operation type) in Redis, taken in one Lua
script so concurrent API processes share it atomically. The script reads Redis's clock, so the
API hosts' clocks need not agree.

The limiter has its own pool of Redis connections, which makes a burst wait for a connection
rather than fail (the shared pool refused the 101st at once, which opened the breaker). When
Redis is really unavailable, each process limits on its own with the same buckets in memory
(which it also consults first, so a client over its limit costs no Redis call):
refusing every request would turn a cache outage into an API outage, and letting every request
through would let a client that can make Redis slow bypass its limits. So during an outage a
key gets at most its limit per API process (docs/decisions.md)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..cache.breaker import Breaker
from ..config import LimitsSettings

# KEYS: the buckets; ARGV: capacity, refill per second, tokens wanted, for each key in turn.
# Takes each key's tokens all or none, in order (a key named twice sees its first taking).
# Returns, per key, 1 and "0" when taken, else 0 and the seconds until they are available
# (a string: Redis would truncate a Lua float to an integer); more than the capacity is
# never available, and its wait is until the bucket is full.
_TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local answers = {}
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local wanted = tonumber(ARGV[3 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1])
  local at = tonumber(state[2])
  if tokens == nil or at == nil then
    tokens = capacity
    at = now
  end
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
  local taken = 0
  local wait = 0
  if wanted > capacity then
    wait = (capacity - tokens) / rate
  elseif tokens >= wanted then
    tokens = tokens - wanted
    taken = 1
  else
    wait = (wanted - tokens) / rate
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(capacity / rate * 1000) + 1000)
  answers[2 * i - 1] = taken
  answers[2 * i] = tostring(wait)
end
return answers
"""
# Takings sent in one script call at most (the rest wait for the next).
_MAX_SHARED = 256


@dataclass(frozen=True)
class Bucket:
    name: str
    capacity: int
    per_s: float


def buckets(limits: LimitsSettings) -> dict[str, Bucket]:
    """The buckets by operation type; "subscription" counts subscribe messages (a running
    subscription takes nothing more)."""
    return {
        "query": Bucket("query", limits.query_burst, limits.query_rate_per_s),
        "mutation": Bucket("mutation", limits.mutation_burst, limits.mutation_rate_per_s),
        "subscription": Bucket("subscription", limits.subscribe_burst,
                               limits.subscribe_rate_per_s),
    }


class LocalBuckets:
    """The same token buckets in this process's memory. This process's requests are a subset
    of the key's requests everywhere, so a local bucket never holds fewer tokens than the
    shared one: an empty local bucket refuses without asking Redis, and while Redis is
    unavailable the local buckets alone decide. At most ``max_keys`` buckets; past that the
    least recently used is forgotten (it starts full again when its key comes back)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys

    def take(self, bucket: Bucket, key: str, tokens: int = 1) -> float | None:
        """Take ``tokens`` (all or none): None when taken, else seconds until they are
        available (more than the capacity never is: then until the bucket is full)."""
        return self._change(bucket, key, -tokens)

    def give_back(self, bucket: Bucket, key: str, tokens: int = 1) -> None:
        """Return tokens taken here for a request the shared bucket refused."""
        self._change(bucket, key, tokens)

    def _change(self, bucket: Bucket, key: str, delta: int) -> float | None:
        now = time.monotonic()
        name = f"{bucket.name}:{key}"
        capacity = float(bucket.capacity)
        tokens, at = self._state.pop(name, (capacity, now))
        tokens = min(capacity, tokens + max(0.0, now - at) * bucket.per_s)
        wait = None
        if delta > 0:
            tokens = min(capacity, tokens + delta)
        elif -delta > capacity:
            wait = max((capacity - tokens) / bucket.per_s, 0.001)
        elif tokens >= -delta:
            tokens += delta
        else:
            wait = max((-delta - tokens) / bucket.per_s, 0.001)
        self._state[name] = (tokens, now)
        if len(self._state) > self._max_keys:
            self._state.popitem(last=False)
        return wait


@dataclass(slots=True)
class _Taking:
    key: str
    bucket: Bucket
    tokens: int
    outcome: asyncio.Future[float | None]  # as retry_after answers; None also when unasked


class RateLimiter:
    """``retry_after(kind, key, tokens)``: None when the request may go ahead, else seconds
    to wait.

    The shared buckets are taken in one script call for every request that asks while an
    earlier call is out (group commit, as createPayment's acceptance does): an idle process
    asks for one request at once, a busy one for many in one round trip."""

    def __init__(self, redis: Redis, limits: LimitsSettings, guard: Breaker) -> None:
        self._take = redis.register_script(_TAKE)
        self._buckets = buckets(limits)
        self._guard = guard
        self.local = LocalBuckets()
        self._waiting: list[_Taking] = []
        self._sending: asyncio.Task[None] | None = None
        self.calls = 0  # script calls made (each for one or more takings)

    def capacity(self, kind: str) -> int:
        """The burst of the operation type's bucket (0 when it has none)."""
        bucket = self._buckets.get(kind)
        return bucket.capacity if bucket else 0

    async def retry_after(self, kind: str, key: str, tokens: int = 1) -> float | None:
        """Take ``tokens`` at once (a bulk createPayments takes one per input) or none."""
        bucket = self._buckets.get(kind)
        if bucket is None:
            return None
        # This process's own bucket first: empty, the shared one is empty too.
        wait = self.local.take(bucket, key, tokens)
        if wait is not None or not self._guard.available:
            return wait
        taking = _Taking(f"ratelimit:{bucket.name}:{key}", bucket, tokens,
                         asyncio.get_running_loop().create_future())
        self._waiting.append(taking)
        if self._sending is None:
            self._sending = asyncio.create_task(self._send(), name="rate limits")
        # Shielded: the call is shared, and one request leaving must not cancel it for all.
        shared_wait = await asyncio.shield(taking.outcome)
        if shared_wait is None:
            return None
        # Other processes spent the shared bucket: this request was not let through here.
        self.local.give_back(bucket, key, tokens)
        return shared_wait

    async def _send(self) -> None:
        """Sends the waiting takings, a script call at a time, until none is left."""
        try:
            while self._waiting:
                batch = self._waiting[:_MAX_SHARED]
                del self._waiting[:_MAX_SHARED]
                await self._send_batch(batch)
        finally:
            self._sending = None
            for taking in self._waiting:  # cancelled while waiting (the process closing)
                if not taking.outcome.done():
                    taking.outcome.set_result(None)
            self._waiting.clear()

    async def _send_batch(self, batch: list[_Taking]) -> None:
        args: list[int | float] = []
        for taking in batch:
            args += [taking.bucket.capacity, taking.bucket.per_s, taking.tokens]
        answers: list[object] | None = None
        try:
            self.calls += 1
            answers = await self._take(keys=[t.key for t in batch], args=args)
        except (RedisError, OSError) as exc:
            self._guard.failed("rate limits", exc)  # the local tokens stand
        finally:
            for index, taking in enumerate(batch):
                if taking.outcome.done():
                    continue
                if answers is None or int(answers[2 * index]):  # type: ignore[call-overload]  # Redis's integer reply
                    taking.outcome.set_result(None)
                else:
                    taking.outcome.set_result(max(float(answers[2 * index + 1]), 0.001))  # type: ignore[arg-type]  # Redis's string reply


def retry_after_header(seconds: float) -> str:
    """HTTP Retry-After takes whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(seconds)))
