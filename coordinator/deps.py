"""FastAPI dependencies: the coordinator's parts and the calling principal."""

from __future__ import annotations

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


async def principal(request: Request, authorization: str | None = Header(None)) -> Principal:
    """The API key's owner, or anonymous where keys are optional (a devnet).

    With keys optional, a valid key still gets its own usage and limit; an
    unknown one is treated as no key (OpenAI clients always send one).
    Lookups are remembered for KEY_CACHE_S, so a request does not wait on
    the database for its key."""
    c = request.app.state.coordinator
    settings = c.settings
    who = Principal(None, "anonymous", settings.anonymous_rate_limit_rpm)
    if authorization or settings.require_api_key:
        now = c.clock()
        hit = c.key_cache.get(authorization)
        if hit is None or hit[0] < now:
            hit = (now + KEY_CACHE_S, await anyio.to_thread.run_sync(_lookup, c, authorization))
            if len(c.key_cache) > 10_000:
                c.key_cache.clear()
            c.key_cache[authorization] = hit
        found = hit[1]
        if found is None:
            if settings.require_api_key:
                keys.check_header(authorization)
                raise Unauthorized("invalid API key")
        else:
            key_id, prefix, rpm = found
            who = Principal(key_id, prefix, rpm if rpm is not None else settings.rate_limit_rpm)
    c.limiter.take(who.key_id if who.key_id is not None else "anonymous", who.rpm)
    return who


def _lookup(c, authorization: str | None) -> tuple | None:
    with c.sessions() as s:
        try:
            row = keys.lookup(s, authorization)
        except Unauthorized:
            return None
        return row.id, row.prefix, row.rate_limit_rpm
