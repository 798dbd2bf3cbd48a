"""GET /v1/jobs/{job_id}, GET /v1/batches/{batch_id}: status, batch, leaf index, Merkle proof, tx hash.
GET /v1/disagreements: consensus jobs whose nodes disagreed, for challengers."""

import anyio
from fastapi import APIRouter, Depends, Path, Query

from coordinator.deps import coordinator, principal, service

router = APIRouter()


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str = Path(max_length=66), svc=Depends(service), c=Depends(coordinator),
                  _who=Depends(principal)) -> dict:
    # The stored status, as far as the canonical chain backs it right now (between two
    # follower runs a reorganisation may have taken its batch or its finalize away).
    view = await anyio.to_thread.run_sync(svc.job_view, job_id)
    return await anyio.to_thread.run_sync(c.follower.vouch, view)


@router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: int = Path(ge=1, le=2**62), svc=Depends(service), _who=Depends(principal)) -> dict:
    return await anyio.to_thread.run_sync(svc.batch_view, batch_id)


@router.get("/v1/disagreements")
async def disagreements(after: float = Query(0, ge=0), limit: int = Query(100, ge=1, le=500),
                        svc=Depends(service)) -> dict:
    """Open like the chain it mirrors: every leaf listed is in (or on its way to) public calldata."""
    return await anyio.to_thread.run_sync(svc.disagreements, after, limit)
