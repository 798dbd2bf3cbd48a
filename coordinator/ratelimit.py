"""Token buckets: `rpm` per minute with bursts up to `rpm`; per key the unit is a job (a
consensus-k request of m inputs is k x m jobs), per client address a failed key lookup."""

from __future__ import annotations

import threading
from collections.abc import Callable

from coordinator.errors import RateLimited

MAX_BUCKETS = 100_000   # buckets kept (one per key and per client address with failed lookups)


class RateLimiter:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: object, rpm: int, n: int = 1, fail: bool = True) -> None:
        """Spend `n` of `key`'s budget of `rpm` per minute or raise RateLimited with the
        wait (fail=False: spend what is there and never raise, to count failures)."""
        if rpm <= 0:
            return
        if fail and n > rpm:
            raise RateLimited(f"this request is {n} jobs; the rate limit is {rpm} jobs per minute", 60.0)
        rate = rpm / 60.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (float(rpm), now))
            tokens = min(float(rpm), tokens + (now - at) * rate)
            if tokens < n and fail:
                self._buckets[key] = (tokens, now)
                raise RateLimited(f"rate limit of {rpm} jobs per minute reached", (n - tokens) / rate)
            self._buckets[key] = (max(tokens - n, 0.0), now)
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.pop(next(iter(self._buckets)))   # oldest key first (insertion order)

    def check(self, key: object, rpm: int) -> None:
        """RateLimited when `key` has no budget left, without spending any."""
        if rpm <= 0:
            return
        rate = rpm / 60.0
        with self._lock:
            tokens, at = self._buckets.get(key, (float(rpm), self.clock()))
            tokens = min(float(rpm), tokens + (self.clock() - at) * rate)
        if tokens < 1.0:
            raise RateLimited(f"too many failed API key lookups from this address (limit {rpm} per minute)",
                              (1.0 - tokens) / rate)
