"""Per-key rate limits: a token bucket per (key, operation type) in Redis, taken in one Lua
script so concurrent API processes share it atomically. The script reads Redis's clock, so the
API hosts' clocks need not agree. When Redis is down the limiter lets requests through (fail
open): refusing every request would turn a cache outage into an API outage."""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..config import LimitsSettings
from .redis_guard import RedisGuard

# KEYS[1]: the bucket; ARGV: capacity, refill per second. Takes one token if there is one.
# Returns {1, "0"} when taken, else {0, seconds until one is available} (a string: Redis would
# truncate a Lua float to an integer).
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local taken = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {taken, tostring(wait)}
"""


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


class RateLimiter:
    """``retry_after(kind, key)``: None when the request may go ahead, else seconds to wait."""

    def __init__(self, redis: Redis, limits: LimitsSettings, guard: RedisGuard) -> None:
        self._take = redis.register_script(_TAKE)
        self._buckets = buckets(limits)
        self._guard = guard

    async def retry_after(self, kind: str, key: str) -> float | None:
        bucket = self._buckets.get(kind)
        if bucket is None or not self._guard.available:
            return None
        try:
            taken, wait = await self._take(
                keys=[f"ratelimit:{bucket.name}:{key}"], args=[bucket.capacity, bucket.per_s]
            )
        except (RedisError, OSError) as exc:
            self._guard.failed("rate limits", exc)
            return None
        if int(taken):
            return None
        return max(float(wait), 0.001)


def retry_after_header(seconds: float) -> str:
    """HTTP Retry-After takes whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(seconds)))
