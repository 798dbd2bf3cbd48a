"""GET /healthz, GET /metrics, GET /v1/usage.

/healthz is open (load balancers) and says only whether the service is up.
/metrics names nodes, routes and volumes: it needs an API key unless
`public_metrics` (a devnet, or a scraper on a private network) is on.
/v1/usage is per API key; anonymous callers have none (it would show every
anonymous caller's traffic to any of them)."""

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from coordinator.deps import coordinator, keyed_principal, principal

router = APIRouter()


@router.get("/healthz")
async def healthz(c=Depends(coordinator)):
    report = await anyio.to_thread.run_sync(c.health)
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@router.get("/metrics")
async def metrics(request: Request, c=Depends(coordinator), authorization: str | None = Header(None)) -> Response:
    if not c.settings.public_metrics:
        await keyed_principal(request, authorization)
    return Response(c.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/usage")
async def usage(c=Depends(coordinator), who=Depends(keyed_principal)) -> dict:
    return await anyio.to_thread.run_sync(c.service.usage, who)
