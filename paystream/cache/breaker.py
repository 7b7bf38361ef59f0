"""The circuit breaker for Redis, the one dependency the service may run without.

After a failure, its users skip Redis for ``pause_s`` instead of waiting on it for every
request: the cache answers "miss" and keeps its writes, the rate limiter decides from its
local buckets, persisted queries are not stored. After the pause the next call tries again;
one success is all it takes (there is no half-open state to count: the calls are cheap and
each is bounded by the client's own timeout).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("paystream.redis")


class Breaker:
    def __init__(self, pause_s: float) -> None:
        self._pause_s = pause_s
        self._open_until = 0.0
        self.failures = 0  # times it opened (errors seen), for callers that watch for outages

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def failed(self, what: str, exc: BaseException) -> None:
        """Open for the pause; logs the error's type only (its text may name a host)."""
        self.failures += 1
        log.warning("redis unavailable for %s (%s); carrying on without it", what,
                    type(exc).__name__)
        self._open_until = time.monotonic() + self._pause_s

    def close(self) -> None:
        """Try Redis again at once (a restart's dead pooled connections fail exactly once)."""
        self._open_until = 0.0
