"""FastAPI dependencies: the coordinator's parts and the calling principal."""

from __future__ import annotations

import threading
from collections import OrderedDict

import anyio
from fastapi import Header, Request

from coordinator import keys
from coordinator.errors import Unauthorized
from coordinator.service import InferenceService, Principal


def coordinator(request: Request):
    return request.app.state.coordinator


def service(request: Request) -> InferenceService:
    return request.app.state.coordinator.service


KEY_CACHE_S = 10.0  # a revoked key stops working within this time


class KeyCache:
    """Recent key lookups, least recently used dropped first (a flood of
    random keys evicts old entries one by one, never the whole cache)."""

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, tuple | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, header: str, now: float) -> tuple[bool, tuple | None]:
        with self._lock:
            hit = self._entries.get(header)
            if hit is None or hit[0] < now:
                return False, None
            self._entries.move_to_end(header)
            return True, hit[1]

    def put(self, header: str, now: float, found: tuple | None) -> None:
        with self._lock:
            self._entries[header] = (now + KEY_CACHE_S, found)
            self._entries.move_to_end(header)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


async def principal(request: Request, authorization: str | None = Header(None)) -> Principal:
    """The API key's owner, or anonymous where keys are optional (a devnet).

    A key that is sent must be valid (401 otherwise, even where keys are
    optional: a typo must not silently turn a paying client into the shared
    anonymous one). Failed lookups are rate-limited per client address, so
    keys cannot be guessed or the database flooded with lookups. Lookups are
    remembered for KEY_CACHE_S in a bounded LRU cache, so a request does not
    wait on the database for its key."""
    c = request.app.state.coordinator
    settings = c.settings
    if not authorization and not settings.require_api_key:
        who = Principal(None, "anonymous", settings.anonymous_rate_limit_rpm)
        c.limiter.take("anonymous", who.rpm)
        return who
    client = request.client.host if request.client else "unknown"
    if not authorization:
        keys.check_header(authorization)     # 401: missing key
    now = c.clock()
    cached, found = c.key_cache.get(authorization, now)
    if not cached:
        c.limiter.check(("auth-failures", client), settings.auth_failure_rpm)   # 429 before any lookup
        keys.check_header(authorization)     # 401: malformed header
        found = await anyio.to_thread.run_sync(_lookup, c, authorization)
        c.key_cache.put(authorization, now, found)
    if found is None:
        c.limiter.take(("auth-failures", client), settings.auth_failure_rpm, fail=False)
        raise Unauthorized("invalid API key")
    key_id, prefix, rpm = found
    who = Principal(key_id, prefix, rpm if rpm is not None else settings.rate_limit_rpm)
    c.limiter.take(who.key_id, who.rpm)
    return who


async def keyed_principal(request: Request, authorization: str | None = Header(None)) -> Principal:
    """A principal with an API key (per-key resources such as /v1/usage), whatever require_api_key says."""
    who = await principal(request, authorization)
    if who.key_id is None:
        raise Unauthorized("this endpoint needs an API key: send `Authorization: Bearer <key>`")
    return who


def _lookup(c, authorization: str | None) -> tuple | None:
    with c.sessions() as s:
        try:
            row = keys.lookup(s, authorization)
        except Unauthorized:
            return None
        return row.id, row.prefix, row.rate_limit_rpm
