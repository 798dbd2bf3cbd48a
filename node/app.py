"""The node's HTTP API.

POST /v1/execute  {job_id, model, model_id, input}  (hex strings; input =
                  JobInput bytes) -> the engine's output, its roots and the
                  EIP-712-signed ResultLeaf.
GET  /healthz     address, served models, jobs running.

The node signs only for models it was configured with (name -> on-chain
id), under the chain id and rollup address of its deployment."""

from __future__ import annotations

import threading
import time

from eth_account import Account
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from node import engines
from node.errors import BadJob, NodeError
from node.settings import NodeSettings
from opinfer.errors import CommitmentError
from opinfer.trace.jobinput import JobInput
from opinfer.trace.leaf import MAX_INPUT_BYTES, ResultLeaf
from opinfer.trace.outputs import input_root, tensor_root

HEX = r"^0x[0-9a-fA-F]*$"


class ExecuteRequest(BaseModel):
    job_id: str = Field(pattern=r"^0x[0-9a-fA-F]{32}$")
    model: str = Field(max_length=64)
    model_id: int = Field(ge=1)
    input: str = Field(pattern=HEX, max_length=2 + 2 * MAX_INPUT_BYTES)


class Node:
    """Runs jobs and signs their leaves (no HTTP here: tests and benches call it directly too)."""

    def __init__(self, private_key: str, chain_id: int, rollup: str, model_ids: dict[str, int], concurrency: int = 1):
        self.account = Account.from_key(private_key)
        self.key = private_key
        self.chain_id, self.rollup = chain_id, rollup
        self.model_ids = dict(model_ids)
        self.slots = threading.Semaphore(max(1, concurrency))
        self.running = 0

    @property
    def address(self) -> str:
        return self.account.address

    def execute(self, req: ExecuteRequest) -> dict:
        if self.model_ids.get(req.model) != req.model_id:
            raise BadJob(f"this node does not serve model {req.model!r} with id {req.model_id}")
        data = bytes.fromhex(req.input[2:])
        try:
            job = JobInput.from_bytes(data)
        except CommitmentError as exc:
            raise BadJob(f"malformed job input: {exc}") from None
        engine = engines.load(req.model)
        with self.slots:
            self.running += 1
            started = time.perf_counter()
            try:
                output, payload = engine.run(job)
            finally:
                self.running -= 1
            engine_ms = (time.perf_counter() - started) * 1000
        leaf = ResultLeaf(bytes.fromhex(req.job_id[2:]), req.model_id, input_root(job), tensor_root(output),
                          self.address, data).signed(self.key, self.chain_id, self.rollup)
        return {"job_id": req.job_id, "model_id": req.model_id, "node": self.address,
                "input_root": "0x" + leaf.input_root.hex(), "output_root": "0x" + leaf.output_root.hex(),
                "signature": "0x" + leaf.signature.hex(), "output": payload, "engine_ms": round(engine_ms, 3)}


def create_app(settings: NodeSettings | None = None, node: Node | None = None) -> FastAPI:
    if node is None:
        settings = settings or NodeSettings()
        chain_id, rollup = settings.domain()
        node = Node(settings.key, chain_id, rollup, settings.model_ids(), settings.concurrency)
        if settings.preload:
            for name in node.model_ids:
                if name in engines.ENGINES:
                    engines.load(name)
    app = FastAPI(title="opinfer node", version="0.1.0")
    app.state.node = node

    @app.exception_handler(NodeError)
    async def node_error(_request, exc: NodeError):
        status = 400 if isinstance(exc, BadJob) else 503
        return JSONResponse({"error": {"message": str(exc), "type": type(exc).__name__}}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return JSONResponse({"error": {"message": str(exc.errors()[:3]), "type": "BadJob"}}, status_code=400)

    @app.post("/v1/execute")
    def execute(req: ExecuteRequest) -> dict:
        return node.execute(req)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "address": node.address, "models": node.model_ids, "running": node.running}

    return app


def serve(host: str | None = None, port: int | None = None) -> int:
    """`opinfer node run`: serve this node until interrupted."""
    import uvicorn

    settings = NodeSettings()
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port, log_level="info")
    return 0
