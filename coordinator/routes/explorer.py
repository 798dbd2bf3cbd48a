"""The explorer: its page (GET /explorer and its static files) and the
read-only JSON the page polls (GET /v1/explorer/...). See coordinator/explorer/."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import anyio
from fastapi import APIRouter, Depends, Header, Path as PathParam, Query, Request
from fastapi.responses import FileResponse, RedirectResponse

from coordinator.deps import coordinator, principal
from coordinator.errors import NotFound
from coordinator.explorer.views import Explorer

router = APIRouter()
STATIC = Path(__file__).resolve().parents[1] / "explorer" / "static"
ASSETS = {"explorer.js": "text/javascript", "keccak.js": "text/javascript", "explorer.css": "text/css",
          "favicon.svg": "image/svg+xml"}
ADDRESS = r"^0x[0-9a-fA-F]{40}$"
# Keyless page reads, per client address. A budget of their own: a page polling every
# 2 s (1-3 requests) must neither run into nor use up the keyless inference budget
# (anonymous_rate_limit_rpm, shared by every keyless client).
EXPLORER_RPM = 600
_make_lock = threading.Lock()


async def reader(request: Request, authorization: str | None = Header(None)):
    """Who may read: anyone where keys are optional (rate-limited per address), else a valid key."""
    c = request.app.state.coordinator
    if not authorization and not c.settings.require_api_key:
        c.limiter.take(("explorer", request.client.host if request.client else "unknown"), EXPLORER_RPM)
        return None
    return await principal(request, authorization)


def explorer(c=Depends(coordinator)) -> Explorer:
    """One Explorer (and event index) per coordinator, made on first use."""
    ex = getattr(c, "_explorer", None)
    if ex is None:
        with _make_lock:
            ex = getattr(c, "_explorer", None)
            if ex is None:
                ex = c._explorer = Explorer(c, from_block=c.settings.explorer_from_block)
    return ex


# ---------------------------------------------------------------- the page (no build step: files as shipped)

@router.get("/explorer", include_in_schema=False)
def page() -> FileResponse:
    # no-cache: a coordinator upgrade shows the new page at once (the files are small)
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"cache-control": "no-cache"})


@router.get("/explorer/", include_in_schema=False)
def page_slash() -> RedirectResponse:
    return RedirectResponse("/explorer", status_code=308)


@router.get("/explorer/static/{name}", include_in_schema=False)
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"no explorer asset {name!r}", code="not_found")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"cache-control": "no-cache"})


# ---------------------------------------------------------------- JSON (read-only)

async def _run(fn, *args):
    return await anyio.to_thread.run_sync(fn, *args)


@router.get("/v1/explorer/config")
async def config(ex=Depends(explorer), _who=Depends(reader)) -> dict:
    """RPC URL, chain id, contract addresses and protocol parameters, for the page's own chain reads."""
    return await _run(ex.config)


@router.get("/v1/explorer/overview")
async def overview(ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(ex.overview)


@router.get("/v1/explorer/jobs")
async def jobs(limit: int = Query(50, ge=1, le=200), node: str | None = Query(None, pattern=ADDRESS),
               status: Literal["pending", "posted", "disputed", "final", "invalid", "rejected"] | None = None,
               ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(ex.jobs, limit, node, status)


@router.get("/v1/explorer/jobs/{job_id}")
async def job(job_id: str = PathParam(max_length=66), ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(ex.job, job_id)


@router.get("/v1/explorer/batches")
async def batches(limit: int = Query(50, ge=1, le=200), before: int | None = Query(None, ge=1, le=2**62),
                  ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(ex.batches, limit, before)


@router.get("/v1/explorer/batches/{batch_id}")
async def batch(batch_id: int = PathParam(ge=1, le=2**62), ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(ex.batch, batch_id)


@router.get("/v1/explorer/games")
async def games(limit: int = Query(50, ge=1, le=200), party: str | None = Query(None, pattern=ADDRESS),
                ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(lambda: ex.games(limit, True, party))


@router.get("/v1/explorer/games/{game_id}")
async def game(game_id: int = PathParam(ge=1, le=2**62), ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(ex.game, game_id)


@router.get("/v1/explorer/nodes")
async def nodes(ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(ex.nodes)


@router.get("/v1/explorer/challengers")
async def challengers(ex=Depends(explorer), _who=Depends(reader)) -> dict:
    return await _run(ex.challengers)


@router.get("/v1/explorer/search")
async def search(q: str = Query(min_length=1, max_length=200), ex=Depends(explorer), _who=Depends(reader)) -> dict:
    """Where a job id, batch id, game ("game 3"), address or transaction hash leads."""
    return await _run(ex.search, q)
