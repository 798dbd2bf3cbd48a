"""GET /healthz, GET /metrics, GET /v1/usage."""

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from coordinator.deps import coordinator, principal

router = APIRouter()


@router.get("/healthz")
async def healthz(c=Depends(coordinator)):
    report = await anyio.to_thread.run_sync(c.health)
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@router.get("/metrics")
def metrics(c=Depends(coordinator)) -> Response:
    return Response(c.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/usage")
async def usage(c=Depends(coordinator), who=Depends(principal)) -> dict:
    return await anyio.to_thread.run_sync(c.service.usage, who)
