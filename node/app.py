"""The node's HTTP API.

POST /v1/execute  {job_id, model, model_id, input}  (hex strings; input =
                  JobInput bytes) -> the engine's output, its roots and the
                  EIP-712-signed ResultLeaf. Authenticated when the node is
                  configured with a token or trusted coordinators (node/auth.py).
                  Optional: "stream": true answers text/event-stream, one event
                  per token as it is sampled, then "done" with the signed answer
                  (or "error", and nothing signed); "logprobs": k and
                  "prompt_logprobs": true add log-probabilities to the output
                  (docs/protocol.md, "Streaming from the node"; docs/serving.md).
GET  /healthz     address, served models, jobs running, draining.
GET  /metrics     Prometheus text (jobs, latency, batch sizes, games).

Errors: {"error": {"message", "type"}} with 400 (bad job), 401/403 (auth),
413 (body too large), 503 (draining / engine unavailable).

The node signs only for models it was configured with (name -> on-chain
id), under the chain id and rollup address of its deployment. Chat jobs run
through a Scheduler (continuous batching: a job joins the running decode batch
at the next step and leaves when done, node/scheduler.py); other jobs of one
model through a Batcher (one stacked engine pass). Either way the same bits as
one job at a time."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from eth_account import Account
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from pydantic import BaseModel, Field

from node import engines
from node.auth import Authenticator, AuthError
from node.batching import Batcher
from node.errors import BadJob, EngineUnavailable, NodeError
from node.metrics import Metrics
from node.scheduler import Cancelled, Scheduler, Ticket
from node.settings import NodeSettings
from opinfer.errors import CommitmentError
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.leaf import MAX_INPUT_BYTES, ResultLeaf
from opinfer.trace.outputs import input_root, tensor_root

HEX = r"^0x[0-9a-fA-F]*$"
MAX_BODY = 2 * MAX_INPUT_BYTES + 4096


class ExecuteRequest(BaseModel):
    job_id: str = Field(pattern=r"^0x[0-9a-fA-F]{32}$")
    model: str = Field(max_length=64)
    model_id: int = Field(ge=1)
    input: str = Field(pattern=HEX, max_length=2 + 2 * MAX_INPUT_BYTES)
    stream: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    prompt_logprobs: bool = False


@dataclass
class Running:
    """A job accepted and submitted (Node.start); Node.finish waits for it and signs."""

    req: ExecuteRequest
    job: JobInput
    data: bytes
    started: float
    future: Future
    ticket: Ticket | None = None
    first_token: list = field(default_factory=list)

    def cancel(self) -> None:
        if self.ticket is not None and not self.future.done():
            self.ticket.cancel()


class Node:
    """Runs jobs and signs their leaves (no HTTP here: tests and benches call it directly too).

    engines: name -> engine (node/engines.py); by default the shared real
    engines by model name. max_batch: jobs of one model per engine pass."""

    def __init__(self, private_key: str, chain_id: int, rollup: str, model_ids: dict[str, int], concurrency: int = 1,
                 engines_by_name: dict | None = None, metrics: Metrics | None = None, max_batch: int = 8,
                 prefill_tokens: int | None = 64):
        self.account = Account.from_key(private_key)
        self.key = private_key
        self.chain_id, self.rollup = chain_id, rollup
        self.model_ids = dict(model_ids)
        self.engines = dict(engines_by_name or {})
        self.metrics = metrics or Metrics()
        self.max_batch = max_batch if concurrency <= 1 else max(max_batch, concurrency)
        self.prefill_tokens = prefill_tokens
        self._batchers: dict[str, Batcher] = {}
        self._schedulers: dict[str, Scheduler] = {}
        self._lock = threading.Lock()
        self.running = 0
        self.draining = False

    @property
    def address(self) -> str:
        return self.account.address

    def engine(self, name: str):
        if name in self.engines:
            return self.engines[name]
        try:
            return engines.load(name)
        except BadJob:
            raise
        except Exception as exc:  # noqa: BLE001 - weights missing, out of memory...
            raise EngineUnavailable(f"engine for {name} could not be loaded: {exc}") from None

    def program(self, name: str):
        """The integer program of a served model (the defender's traces)."""
        return self.engine(name).program()

    def batcher(self, name: str) -> Batcher:
        with self._lock:
            b = self._batchers.get(name)
            if b is None:
                engine = self.engine(name)
                hist = self.metrics.batch_size.labels(name)
                b = self._batchers[name] = Batcher(engine.run_many, self.max_batch, f"batch-{name}", hist.observe)
            return b

    def scheduler(self, name: str) -> Scheduler:
        with self._lock:
            s = self._schedulers.get(name)
            if s is None:
                engine = self.engine(name)
                hist = self.metrics.batch_size.labels(name)
                s = self._schedulers[name] = Scheduler(engine, self.max_batch, self.prefill_tokens, f"sched-{name}",
                                                       hist.observe)
                logging.getLogger("opinfer.node").info(
                    "continuous batching of %s: up to %d jobs per step, at most %s prompt tokens per step "
                    "(a running stream waits at most one pass of %s rows)", name, self.max_batch,
                    self.prefill_tokens, "unbounded" if self.prefill_tokens is None
                    else self.max_batch + self.prefill_tokens)
            return s

    def close(self) -> None:
        with self._lock:
            workers = list(self._batchers.values()) + list(self._schedulers.values())
            self._batchers, self._schedulers = {}, {}
        for w in workers:
            w.close()

    def commit(self, name: str, job: JobInput, output, payload: dict):
        """The output the node signs (dishonest test nodes override this)."""
        return output, payload

    def start(self, req: ExecuteRequest, on_token=None) -> Running:
        """Check the job and submit it; what is wrong before the first token raises here
        (BadJob, EngineUnavailable). on_token(index, id, logprob, top) sees each generated
        token of a chat job as it is sampled (on the scheduler's thread)."""
        if self.draining:
            raise EngineUnavailable("node is shutting down")
        started = time.perf_counter()
        name = req.model
        try:
            if self.model_ids.get(name) != req.model_id:
                raise BadJob(f"this node does not serve model {name!r} with id {req.model_id}")
            data = bytes.fromhex(req.input[2:])
            try:
                job = JobInput.from_bytes(data)
            except CommitmentError as exc:
                raise BadJob(f"malformed job input: {exc}") from None
            engine = self.engine(name)
            chat = getattr(engine, "kind", "") == "chat"
            if (req.logprobs is not None or req.prompt_logprobs) and not chat:
                raise BadJob("logprobs and prompt_logprobs apply to chat jobs only")
            engine.check(job)
            run = Running(req, job, data, started, Future())
            if chat:
                first = run.first_token

                def listen(index, token, logprob, top):
                    if not first:
                        first.append(time.perf_counter())
                        self.metrics.first_token_seconds.labels(name).observe(first[0] - started)
                    if on_token is not None:
                        on_token(index, token, logprob, top)

                run.ticket = self.scheduler(name).submit(job, listen, req.logprobs, req.prompt_logprobs)
                run.future = run.ticket.future
            else:
                run.future = self.batcher(name).submit(job)
        except BadJob:
            self.metrics.jobs.labels(name[:64], "refused").inc()
            raise
        except Exception:
            self.metrics.jobs.labels(name[:64], "error").inc()
            raise
        with self._lock:
            self.running += 1
        self.metrics.inflight.inc()
        run.future.add_done_callback(lambda f: self._done(name, f))
        return run

    def _done(self, name: str, future) -> None:
        with self._lock:
            self.running -= 1
        self.metrics.inflight.dec()
        if not future.cancelled() and isinstance(future.exception(), Cancelled):
            self.metrics.jobs.labels(name, "cancelled").inc()

    def finish(self, run: Running) -> dict:
        """Wait for the job's output and sign its leaf (a failed job raises: nothing is signed)."""
        req, name, job = run.req, run.req.model, run.job
        try:
            output, payload = run.future.result()
            output, payload = self.commit(name, job, output, payload)
        except BadJob:
            self.metrics.jobs.labels(name[:64], "refused").inc()
            raise
        except Exception:
            self.metrics.jobs.labels(name[:64], "error").inc()
            raise
        engine_ms = (time.perf_counter() - run.started) * 1000
        leaf = ResultLeaf(bytes.fromhex(req.job_id[2:]), req.model_id, input_root(job), tensor_root(output),
                          self.address, run.data).signed(self.key, self.chain_id, self.rollup)
        self.metrics.jobs.labels(name, "ok").inc()
        self.metrics.job_seconds.labels(name).observe((time.perf_counter() - run.started))
        return {"job_id": req.job_id, "model_id": req.model_id, "node": self.address,
                "input_root": "0x" + leaf.input_root.hex(), "output_root": "0x" + leaf.output_root.hex(),
                "signature": "0x" + leaf.signature.hex(), "output": payload, "engine_ms": round(engine_ms, 3)}

    def execute(self, req: ExecuteRequest) -> dict:
        """The whole job: start, wait, sign (the non-stream answer)."""
        return self.finish(self.start(req))


def sse(event: dict) -> bytes:
    """One server-sent event: a `data:` line of JSON and a blank line."""
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def token_event(index: int, token: int, logprob, top) -> bytes:
    """sse of a token event; without logprobs (the common case) formatted directly: the same
    bytes as sse({"type": "token", "index", "id", "logprob": None, "top": None}) without a
    dict and json.dumps per token."""
    if logprob is None and top is None:
        return b'data: {"type":"token","index":%d,"id":%d,"logprob":null,"top":null}\n\n' % (index, token)
    return sse({"type": "token", "index": index, "id": token, "logprob": logprob, "top": top})


class Handoff:
    """Hands items from the scheduler's thread to queues on the event loop with one wakeup
    per burst: the tokens of one decode step (one per stream) reach their streams' queues
    in a single call_soon_threadsafe (a self-pipe write and a loop wakeup), not one each.
    Order per queue is kept (one list, drained in order)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list = []

    def put(self, q: asyncio.Queue, item) -> None:
        with self._lock:
            self._pending.append((q, item))
            if len(self._pending) > 1:      # a drain is already scheduled
                return
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:                # the loop is closed (shutting down)
            pass

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
        for q, item in items:
            q.put_nowait(item)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


class ExecuteGate:
    """Body size, authentication and draining for POST /v1/execute, before the route runs.

    A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which copies every
    chunk of a streamed answer through a memory stream and a task): it reads the
    body once, checks it (the signature covers the body) and hands the same bytes
    to the route; the response, streamed or not, goes straight through."""

    def __init__(self, app, node: "Node", auth: Authenticator):
        self.app, self.node, self.auth = app, node, auth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/execute":
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY:
                return await _error(413, f"request body over {MAX_BODY} bytes", "BadJob")(scope, receive, send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            scope.setdefault("state", {})["caller"] = self.auth.check(Headers(scope=scope), body)
        except AuthError as exc:
            self.node.metrics.auth_failures.inc()
            return await _error(exc.status, str(exc), "AuthError")(scope, receive, send)
        if self.node.draining:
            return await _error(503, "node is shutting down", "EngineUnavailable")(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()      # then the client's disconnect, if it goes away

        await self.app(scope, replay, send)


def _file_engines(settings: NodeSettings) -> dict:
    """Without a chain (`--no-chain`): engines of the models named in OPINFER_NODE_PROGRAMS files
    (each file's own root; no registry to check it against). Other models: their packages'."""
    from opinfer.models.built import find_program, read_meta

    files, out = settings.program_files(), {}
    for name in settings.model_ids() if files else ():
        path = find_program(name, None, files, "/nonexistent")
        if path is not None and name in engines.ENGINES:
            out[name] = engines.load_file(name, path, bytes.fromhex(read_meta(path)["model_root"][2:]))
    return out


def create_app(settings: NodeSettings | None = None, node: Node | None = None, auth: Authenticator | None = None,
               on_shutdown=None) -> FastAPI:
    if node is None:
        settings = settings or NodeSettings()
        chain_id, rollup = settings.domain()
        node = Node(settings.key, chain_id, rollup, settings.model_ids(), settings.concurrency,
                    engines_by_name=_file_engines(settings), max_batch=settings.max_batch,
                    prefill_tokens=settings.prefill_tokens or None)
        if settings.preload:
            for name in node.model_ids:
                if name in engines.ENGINES and name not in node.engines:
                    engines.load(name)
    if auth is None:
        auth = settings.authenticator() if settings is not None else Authenticator()
    if not auth.address:
        auth.bind(node.address)   # signed requests must be addressed to this node (no replays from peers)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        # uvicorn has stopped accepting and let in-flight requests finish: stop the rest.
        node.draining = True
        if on_shutdown:
            on_shutdown()
        node.close()

    app = FastAPI(title="opinfer node", version="0.2.0", lifespan=lifespan)
    app.state.node = node
    app.state.auth = auth

    @app.exception_handler(NodeError)
    async def node_error(_request, exc: NodeError):
        return _error(400 if isinstance(exc, BadJob) else 503, str(exc), type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return _error(400, "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]),
                      "BadJob")

    app.add_middleware(ExecuteGate, node=node, auth=auth)

    handoffs: dict = {}

    def handoff() -> Handoff:
        loop = asyncio.get_running_loop()
        h = handoffs.get(loop)
        if h is None:
            handoffs.clear()                 # one serving loop; a test's earlier loops are gone
            h = handoffs[loop] = Handoff(loop)
        return h

    @app.post("/v1/execute")
    async def execute(req: ExecuteRequest):
        if not req.stream:
            return await run_in_threadpool(node.execute, req)
        events: asyncio.Queue = asyncio.Queue()
        pump = handoff()

        def on_token(index, token, logprob, top):   # the scheduler's thread: encoded there, handed to the loop
            pump.put(events, token_event(index, token, logprob, top))

        run = await run_in_threadpool(node.start, req, on_token)   # errors before the first token: status codes
        # after every token event (the handoff keeps their order)
        run.future.add_done_callback(lambda _f: pump.put(events, None))
        return StreamingResponse(_stream(run, events), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def _stream(run: Running, events: asyncio.Queue):
        try:
            ended = False
            while not ended:
                chunk = [await events.get()]
                while not events.empty():      # tokens that queued meanwhile go out in one write
                    chunk.append(events.get_nowait())
                ended = chunk[-1] is None
                if data := b"".join(e for e in chunk if e is not None):
                    yield data
            try:
                body = await run_in_threadpool(node.finish, run)
            except Exception as exc:  # noqa: BLE001 - a failed job: an error event, nothing signed
                yield sse({"type": "error", "error": {"message": str(exc) or type(exc).__name__,
                                                      "type": type(exc).__name__}})
                return
            yield sse({"type": "done", **body})
        finally:
            run.cancel()   # the client went away: the job leaves the batch at the next step

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "draining" if node.draining else "ok", "address": node.address, "models": node.model_ids,
                "running": node.running, "max_batch": node.max_batch, "prefill_tokens": node.prefill_tokens}

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(node.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(host: str | None = None, port: int | None = None) -> int:
    """Serve this node from OPINFER_NODE_* settings only (no chain setup); see node/service.py for `node run`."""
    from node.service import serve_until_signal

    settings = NodeSettings()
    serve_until_signal(create_app(settings), host or settings.host, port or settings.port, settings.drain_seconds)
    return 0
