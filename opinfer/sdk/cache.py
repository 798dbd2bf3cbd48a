"""A small in-process response cache with a TTL and a stale window (pure;
the clock is injected). Only deterministic requests are cached: greedy chat
or one with an explicit seed, and embeddings (the engine is deterministic, so
an entry is the answer any honest node would give)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Any, Callable


def request_key(path: str, body: dict) -> str:
    return hashlib.sha256((path + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()


def cacheable(path: str, body: dict) -> bool:
    if body.get("stream"):
        return False
    if path.endswith("/completions"):
        # deterministic only when greedy or seeded: an omitted temperature is the model's
        # default (above 0, with a fresh seed per request)
        return body.get("temperature") in (0, 0.0) or body.get("seed") is not None
    return path.endswith("/embeddings")


class TTLCache:
    def __init__(self, ttl_s: float = 300.0, stale_s: float = 3600.0, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.stale_s, self.max_entries, self.clock = ttl_s, stale_s, max_entries, clock
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def put(self, key: str, value: Any) -> None:
        self._items[key] = (self.clock(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, key: str, allow_stale: bool = False) -> tuple[Any, bool] | None:
        """(value, stale) for a fresh entry, or a stale one when allowed; None otherwise."""
        item = self._items.get(key)
        if item is None:
            return None
        age = self.clock() - item[0]
        if age <= self.ttl_s:
            return item[1], False
        if allow_stale and age <= self.ttl_s + self.stale_s:
            return item[1], True
        if age > self.ttl_s + self.stale_s:
            del self._items[key]
        return None

    def __len__(self) -> int:
        return len(self._items)
