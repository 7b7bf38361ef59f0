"""A circuit breaker for the gateway's optional uses of Redis (rate limits, persisted queries):
after a failure they skip Redis for a moment instead of waiting on it for every request."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("paystream.gateway")


class RedisGuard:
    def __init__(self, pause_s: float) -> None:
        self._pause_s = pause_s
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, what: str, exc: BaseException) -> None:
        log.warning("redis unavailable for %s (%s); carrying on without it", what,
                    type(exc).__name__)
        self._down_until = time.monotonic() + self._pause_s
