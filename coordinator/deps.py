"""FastAPI dependencies: the coordinator's parts and the calling principal."""

from __future__ import annotations

from fastapi import Header, Request

from coordinator import keys
from coordinator.service import InferenceService, Principal


def coordinator(request: Request):
    return request.app.state.coordinator


def service(request: Request) -> InferenceService:
    return request.app.state.coordinator.service


def principal(request: Request, authorization: str | None = Header(None)) -> Principal:
    """The API key's owner, or anonymous where keys are optional (a devnet).

    With keys optional, a valid key still gets its own usage and limit; an
    unknown one is treated as no key (OpenAI clients always send one)."""
    c = request.app.state.coordinator
    settings = c.settings
    who = Principal(None, "anonymous", settings.anonymous_rate_limit_rpm)
    if authorization or settings.require_api_key:
        with c.sessions() as s:
            try:
                row = keys.lookup(s, authorization)
                rpm = row.rate_limit_rpm if row.rate_limit_rpm is not None else settings.rate_limit_rpm
                who = Principal(row.id, row.prefix, rpm)
            except keys.Unauthorized:
                if settings.require_api_key:
                    raise
    c.limiter.take(who.key_id if who.key_id is not None else "anonymous", who.rpm)
    return who
