"""A spec's hooks for a llama-family GGUF file (docs/models.md: what parts.py provides).

`GGUFParts(path, name)` binds the family's engine and program to one file: the
refusal rule (the program's committed limits and the sampler's ranges), the fast
engine, batched runs (bit for bit each job alone), the continuous-batching
decoder the node's scheduler drives, the program and release. A model folder's
parts.py is then a few lines (`globals().update(GGUFParts(...).hooks())`), and
`register_gguf(path)` registers a file found at run time (an operator's own
file) under a hooks module made for it; `gguf_spec(path)` is its spec without
registering it (tests' random-weight fixtures: a Runtime runs any spec).
"""

from __future__ import annotations

import re
import sys
import threading
import types
from pathlib import Path

from opinfer.errors import CommitmentError
from opinfer.models.spec import CHAT, JobRefused, ModelSpec

HOOKS = ("check", "load_engine", "run_batch", "request", "result", "decoder", "load_program", "release",
         "from_program")


class GGUFParts:
    """The hooks of one llama-family GGUF file. `path` may be a callable (found on first use:
    a package's file). positions: a job's most positions (default: the file's context,
    at most 4,096); max_new: a job's most new tokens (default positions - 1)."""

    def __init__(self, path, name: str, positions: int | None = None, max_new: int | None = None):
        self._path, self.name = path, name
        self._positions, self._max_new = positions, max_new
        self._lock = threading.Lock()
        self._engine = self._program = self._config = None

    @property
    def path(self) -> str:
        return str(self._path() if callable(self._path) else self._path)

    @property
    def config(self):
        if self._config is None:
            from opinfer.models.llama.gguf import read_config

            self._config = read_config(self.path)
        return self._config

    @property
    def positions(self) -> int:
        from opinfer.models.llama.program import MAX_CONTEXT

        return self._positions or min(self.config.context_length, MAX_CONTEXT)

    @property
    def max_new(self) -> int:
        return self._max_new or self.positions - 1

    def check(self, job) -> None:
        from opinfer.models.llama.program import check_job

        if job.max_tokens < 1:
            raise JobRefused("a chat job needs max_tokens >= 1")
        try:
            check_job(job, self.config.vocab, self.positions, self.max_new)
        except CommitmentError as exc:
            raise JobRefused(str(exc)) from None
        sampler(job)

    def load_engine(self):
        with self._lock:
            if self._engine is None:
                from opinfer.models.llama.engine import IntLlama

                from opinfer.models.llama.program import register_tokens

                self._engine = IntLlama.build(self.path, self.positions)
                register_tokens(self.name, self._engine)   # a dispute trace's generated positions
            return self._engine

    def run_batch(self, engine, jobs: list) -> list:
        return run_batch(engine, jobs)

    def request(self, job) -> dict:
        return request(job)

    def result(self, job, ids, reason):
        return result(job, ids, reason)

    def decoder(self, prefill_tokens: int | None = None):
        from opinfer.models.llama.engine import Decoder

        return Decoder(prefill_tokens)

    def load_program(self):
        with self._lock:
            if self._program is None:
                from opinfer.models.llama.engine import IntLlama
                from opinfer.models.llama.program import build_program

                model = self._engine or IntLlama.build(self.path, self.positions)
                self._program = build_program(model, self.name, self.positions, self.max_new)
            return self._program

    def release(self) -> None:
        with self._lock:
            self._engine = self._program = None

    def from_program(self, program):
        """The engine from a built program file's integers (`opinfer node run --program`)."""
        from opinfer.models.llama.built import model_from_program

        return model_from_program(program)

    def hooks(self) -> dict:
        """The functions a spec's hooks module holds, bound to this file."""
        return {name: getattr(self, name) for name in HOOKS}

    def spec(self, price_wei: int = 0, description: str = "", package: str = "", hooks: str = "") -> ModelSpec:
        """A chat ModelSpec of this file: vocabulary, width and positions from its metadata."""
        cfg = self.config
        return ModelSpec(name=self.name, kind=CHAT, vocab=cfg.vocab, dimensions=cfg.hidden, context=self.positions,
                         hooks=hooks, package=package, price_wei=price_wei,
                         description=description or f"{cfg.arch} GGUF {Path(self.path).name}: {cfg.n_layers} blocks, "
                                                    f"{cfg.n_heads}/{cfg.n_kv_heads} heads, width {cfg.hidden}",
                         extra={"max_new_tokens": self.max_new, "gguf": self.path})


def register_gguf(path, name: str | None = None, price_wei: int = 0, positions: int | None = None) -> ModelSpec:
    """Register a llama-family GGUF file as a chat model of this process's registry
    (opinfer.models.get(name) then serves it through the Runtime, node and challenger;
    opinfer.models.unregister(name) drops it)."""
    from opinfer import models

    return models.register(gguf_spec(path, name, price_wei, positions))


def gguf_spec(path, name: str | None = None, price_wei: int = 0, positions: int | None = None) -> ModelSpec:
    """The chat ModelSpec of a llama-family GGUF file, not registered (a Runtime runs it):
    its hooks live in a module made for it, opinfer.models.llama.parts.file_<name>_<path digest>."""
    import hashlib

    from opinfer.models.llama.gguf import read_config

    cfg = read_config(path)
    name = name or cfg.name or Path(path).name.removesuffix(".gguf")
    parts = GGUFParts(str(path), name, positions)
    digest = hashlib.sha256(f"{Path(path).resolve()}|{positions}".encode()).hexdigest()[:12]
    module_name, parts = hooks_module(__name__, name, digest, path, parts)
    return parts.spec(price_wei, hooks=module_name)


def hooks_module(prefix: str, name: str, digest: str, path, parts) -> tuple[str, object]:
    """(module name, parts) of the module holding one file's hooks (a spec names its hooks by
    module): made once per name and digest; the same file again gets the parts made first."""
    module_name = f"{prefix}.file_{re.sub(r'[^0-9A-Za-z_]', '_', name)}_{digest}"
    known = sys.modules.get(module_name)
    if known is not None:
        return module_name, known.parts
    module = types.ModuleType(module_name, f"hooks of {path}")
    module.__dict__.update(parts.hooks(), path=str(path), parts=parts)
    sys.modules[module_name] = module
    return module_name, parts


# ---------------------------------------------------------------- shared by every file of the family

def sampler(job):
    """The job's sampling parameters; JobRefused when they are out of range."""
    from opinfer.engine.sampling import SamplingParams

    try:
        return SamplingParams.of_job(job)   # penalties and logit bias included
    except ValueError as exc:
        raise JobRefused(str(exc)) from None


def request(job) -> dict:
    """A checked job as a generation request (Decoder, Session.generate, generate_many)."""
    return {"ids": list(job.tokens), "max_tokens": job.max_tokens, "sampler": sampler(job),
            "stop_sequences": job.stop_sequences}


def result(job, ids, reason):
    """(output tensor, payload) of a finished generation, or the JobRefused it cannot be committed as."""
    from opinfer.trace.outputs import generation_output

    try:
        output = generation_output(ids, reason, job.max_tokens)
    except CommitmentError as exc:
        return JobRefused(str(exc))
    return output, {"ids": [int(t) for t in ids], "finish_reason": reason}


def run_batch(engine, jobs: list) -> list:
    """One job: its own session. Several: continuous batching of the decode steps
    (generate_many), the same tokens as each job alone."""
    from opinfer.models.llama.engine import generate_many

    if len(jobs) == 1:
        job, r = jobs[0], request(jobs[0])
        session = engine.session(max_ctx=len(job.tokens) + job.max_tokens)
        ids, reason = session.generate(r["ids"], r["max_tokens"], sampler=r["sampler"],
                                       stop_sequences=r["stop_sequences"])
        return [result(job, ids, reason)]
    requests = [request(job) for job in jobs]
    ctx = max(len(r["ids"]) + r["max_tokens"] for r in requests)
    return [result(job, ids, reason) for job, (ids, reason) in zip(jobs, generate_many(engine, requests, max_ctx=ctx))]
