"""Response cache keyed by (model root, job input bytes).

The engine is deterministic and the job input holds every sampling
parameter (temperature, top-p, seed, max_tokens, stop sequences), so the
key determines the answer bit for bit: a hit is exact. Entries live `ttl`
seconds; past that they are stale and served only when no node answers
and the request allows it, for up to `stale` more seconds."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    job_id: str
    stored_at: float


def cache_key(model_root: bytes, job_input: bytes) -> bytes:
    return hashlib.sha256(model_root + job_input).digest()


class ResponseCache:
    def __init__(self, clock: Callable[[], float], ttl: float, stale: float, max_entries: int = 10_000):
        self.clock, self.ttl, self.stale, self.max_entries = clock, ttl, stale, max_entries
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes, allow_stale: bool = False) -> Entry | None:
        """A fresh entry, or (allow_stale) one within the stale period."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            age = self.clock() - entry.stored_at
            if age > self.ttl + self.stale:
                del self._entries[key]
                return None
            if age > self.ttl and not allow_stale:
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, job_id: str) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key] = Entry(job_id, self.clock())
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
