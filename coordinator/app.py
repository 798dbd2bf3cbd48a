"""The coordinator: composition root (`Coordinator`) and the FastAPI app.

Every part is built here once, from the settings plus what tests and
benches inject (clock, metrics registry, chain, crash hook)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator import db, nodes
from coordinator import models as m
from coordinator.cache import ResponseCache
from coordinator.chain import Chain
from coordinator.deps import KeyCache
from coordinator.errors import ApiError, PayloadTooLarge
from coordinator.finalizer import Finalizer
from coordinator.follower import ChainFollower
from coordinator.metrics import Metrics
from coordinator.poster import BatchPoster, no_crash
from coordinator.ratelimit import RateLimiter
from coordinator.routes import chat, completions, embeddings, explorer, jobs, models, ops
from coordinator.service import Catalog, InferenceService, Tokenizers
from coordinator.settings import Settings
from coordinator.wallet import Wallet
from opinfer.chain.reorg import resolve_confirmations

log = logging.getLogger("opinfer.coordinator")


class Coordinator:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time, metrics: Metrics | None = None,
                 chain: Chain | None = None, tokenizers: Tokenizers | None = None,
                 crash: Callable[[str], None] = no_crash):
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics()
        db.upgrade(settings.database_url)
        self.engine = db.make_engine(settings.database_url)
        self.sessions = db.session_factory(self.engine)
        where = settings.chain()
        self.chain = chain or Chain(where["rpc_url"], where["rollup"], where["registry"], where["stake_manager"])
        self.wallet = Wallet(self.chain.w3, where["key"])
        self.pool = nodes.NodePool(clock, self.metrics, settings.eject_after_failures, settings.eject_for_s,
                                   settings.node_timeout_s, settings.node_connect_timeout_s,
                                   signer_key=where["key"] or "", allow_private=settings.allow_private_endpoints,
                                   health_timeout=settings.node_health_timeout_s,
                                   max_answer_bytes=settings.max_node_answer_bytes)
        with self.sessions() as s:
            self.pool.restore(s)
        self.catalog = Catalog(self.chain)
        self.cache = ResponseCache(clock, settings.cache_ttl_s, settings.cache_stale_s, settings.cache_entries)
        self.limiter = RateLimiter(clock)
        self.key_cache = KeyCache(settings.key_cache_entries)   # Authorization header -> (id, prefix, rpm) or None
        self.confirmations = resolve_confirmations(settings.confirmations, self.chain.chain_id)
        self.follower = ChainFollower(self.sessions, self.chain, self.metrics, settings.max_reorg_depth,
                                      self.confirmations, clock)
        self.poster = BatchPoster(self.sessions, self.chain, self.wallet, clock, self.metrics,
                                  receipt_timeout=settings.receipt_timeout_s, confirmations=self.confirmations,
                                  crash=crash,
                                  on_reject=self._reject_node, follower=self.follower)
        self.finalizer = Finalizer(self.sessions, self.chain, self.wallet, clock, self.metrics,
                                   settings.receipt_timeout_s, self.confirmations, self.follower)
        self.jobs = None
        self.service = InferenceService(settings, self.sessions, self.catalog, self.pool, self.cache, self.metrics,
                                        clock, tokenizers, on_batch_due=self._batch_due, limiter=self.limiter)

    # ------------------------------------------------------------ scheduled work

    def refresh_nodes(self) -> None:
        self.catalog.refresh()
        served = frozenset(mi.id for mi in self.catalog.served())
        self.pool.update(self.chain.nodes(), nodes.parse_static(self.settings.static_nodes), served)
        for node in list(self.pool.nodes.values()):
            self.pool.check(node)
        with self.sessions() as s, s.begin():
            self.pool.save(s)

    def post_batches(self) -> list[int]:
        posted = self.poster.run_once()
        self.metrics.pending_leaves.set(self.poster.pending_count())
        return posted

    def finalize(self) -> list[int]:
        return self.finalizer.run_once()

    def _batch_due(self) -> None:
        if self.jobs is not None:
            self.jobs.post_now()

    def _reject_node(self, address: str, reason: str) -> None:
        """A leaf the poster will not post was the node's doing (bad signature, no
        stake left to slash): it leaves the rotation at once, for the longest
        ejection, and one good answer does not bring it back early. A model
        retired by the registry is nobody's fault."""
        node = self.pool.nodes.get(address)
        if node is not None and not reason.startswith("model"):
            self.pool.eject(node, f"rejected leaf: {reason}")

    def health(self) -> dict:
        report = {"status": "ok", "nodes_in_rotation": 0, "nodes": len(self.pool.nodes)}
        now = self.clock()
        report["nodes_in_rotation"] = sum(n.in_rotation(now) for n in self.pool.nodes.values())
        try:
            report["chain_block"] = self.chain.w3.eth.block_number
        except Exception as exc:  # noqa: BLE001 - report, do not fail
            report.update(status="degraded", chain_error=type(exc).__name__)
        with self.sessions() as s:
            report["pending_leaves"] = s.scalar(select(func.count()).select_from(m.Leaf)
                                                .where(m.Leaf.status == m.PENDING)) or 0
            report["last_batch"] = s.scalar(select(func.max(m.Batch.chain_batch_id)))
            report["posting"] = self._posting_health(s, now)
        if report["nodes_in_rotation"] == 0 or report["posting"]["stalled"]:
            report["status"] = "degraded"
        return report

    def _posting_health(self, s, now: float) -> dict:
        """Is posting keeping up? Stalled: an answered leaf waits (unposted, or its batch
        unconfirmed) longer than posting_stall_s, e.g. a receipt never comes, a
        reorganisation dropped a batch and re-posting fails, or the poster keeps failing."""
        waiting = s.scalar(select(func.min(m.Leaf.created_at)).where(m.Leaf.status == m.PENDING))
        unconfirmed = s.scalar(select(func.count()).select_from(m.Batch)
                               .where(m.Batch.state.in_((m.PREPARED, m.SENT)))) or 0
        oldest = max(0.0, now - waiting) if waiting is not None else 0.0
        out = {"oldest_pending_s": round(oldest, 1), "unconfirmed_batches": unconfirmed,
               "last_posted_at": self.poster.last_posted_at, "last_error": self.poster.last_error,
               "confirmations": self.confirmations, "reorgs": self.follower.reorgs,
               "last_reorg": self.follower.last_reorg,
               "reposts": s.scalar(select(func.sum(m.Batch.reposts))) or 0,
               # with the scheduler off (tests drive the jobs) nothing posts on its own: no stall to report
               "stalled": self.settings.scheduler and oldest > self.settings.posting_stall_s}
        if out["stalled"]:
            out["reason"] = (f"an answered leaf has waited {oldest:.0f} s to be posted "
                             f"(limit posting_stall_s={self.settings.posting_stall_s:g})"
                             + (f"; last error: {self.poster.last_error}" if self.poster.last_error else ""))
        return out

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        try:
            self.refresh_nodes()
        except Exception:  # noqa: BLE001 - the scheduled refresh retries
            log.exception("initial node refresh failed")
        if self.settings.scheduler:
            from coordinator.scheduler import Jobs

            self.jobs = Jobs(self)
            self.jobs.start()

    def stop(self) -> None:
        if self.jobs is not None:
            self.jobs.stop()
            self.jobs = None


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or by counting a chunked body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                err = PayloadTooLarge(f"request body is {int(value)} bytes; the limit is {self.limit} "
                                      "(max_body_bytes)")
                return await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.limit} bytes (max_body_bytes)")
            return message

        return await self.app(scope, counted, send)


class Timing:
    """Request latency per route template (not per raw path: bounded label set)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.request_latency.labels(label, str(status["code"])).observe(time.perf_counter() - started)


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    if first.get("type") == "json_invalid":
        return ApiError("request body is not valid JSON", code="invalid_json")
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    return ApiError(message, param=param, code="invalid_" + str(first.get("type", "value")).split(".")[0])


def create_app(settings: Settings | None = None, coordinator: Coordinator | None = None) -> FastAPI:
    coordinator = coordinator or Coordinator(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        coordinator.start()
        try:
            yield
        finally:
            coordinator.stop()
            await coordinator.pool.aclose()

    app = FastAPI(title="opinfer coordinator", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API over a network of staked nodes with optimistic verification.")
    app.state.coordinator = coordinator
    for module in (models, chat, completions, embeddings, jobs, ops, explorer):
        app.include_router(module.router)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        err = _validation_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None,
                                       "code": kind}}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse({"error": {"message": "internal error", "type": "server_error", "param": None,
                                       "code": None}}, status_code=500)

    app.add_middleware(BodyLimit, limit=coordinator.settings.max_body_bytes)
    app.add_middleware(Timing, metrics=coordinator.metrics)
    return app
