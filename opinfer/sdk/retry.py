"""Retries: exponential backoff with full jitter (AWS architecture blog,
"Exponential Backoff And Jitter"): before retry n (n = 1, 2, ...) sleep a
uniform draw from [0, min(cap, base * 2^(n-1))]. Pure: the clock, the
sleeper and the random source are injected."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from opinfer.sdk import errors

T = TypeVar("T")
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3           # total attempts, the first included
    base_s: float = 0.25
    cap_s: float = 4.0

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry number `retry` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** (retry - 1)))
        return (rng or random).uniform(0.0, ceiling)


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, errors.APIError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, errors.APIConnectionError)


@dataclass
class Retrier:
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def __call__(self, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - filtered by retryable
                if attempt >= self.policy.attempts or not retryable(exc):
                    raise
                delay = self.policy.backoff(attempt, self.rng)
                retry_after = getattr(exc, "retry_after", None)
                self.sleep(max(delay, retry_after or 0.0))
        raise AssertionError("unreachable")
