"""Per-key token buckets: `rpm` requests per minute with bursts up to `rpm`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from coordinator.errors import RateLimited


class RateLimiter:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: object, rpm: int) -> None:
        """Spend one request of `key`'s budget or raise RateLimited with the wait."""
        if rpm <= 0:
            return
        rate = rpm / 60.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (float(rpm), now))
            tokens = min(float(rpm), tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimited(f"rate limit of {rpm} requests per minute reached", (1.0 - tokens) / rate)
            self._buckets[key] = (tokens - 1.0, now)
