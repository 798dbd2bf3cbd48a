"""What the network knows about a model: its spec.

A spec is plain data (name, kind, sizes, limits, sampling defaults) plus the
factories of its parts (engine, integer program, tokenizer), named by module
and imported on first use: a coordinator or a client reads a spec without
loading weights, numpy kernels or the trace machinery.

The job-refusal rule lives here once (`check`): a node must never sign a job
that has no honest trace, and a challenger must never bet a bond on one, so
both ask the same spec (opinfer/models/runtime.py)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from opinfer.errors import OpinferError

CHAT, EMBEDDING = "chat", "embedding"


class JobRefused(OpinferError):
    """The job has no honest trace for this model (it does not fit its limits)."""


class UnknownModel(OpinferError, KeyError):
    """No model of that name is registered in this library."""

    def __str__(self) -> str:   # KeyError quotes its argument; a message reads better
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Sampling:
    """Recommended sampling for a chat model (what its authors suggest), with where it comes from."""

    temperature: float
    top_p: float
    source: str


@dataclass(frozen=True)
class ModelSpec:
    """One model. `hooks` names the module (in the model's folder) that holds
    its factories and its refusal rule: load_engine(), run_batch(engine, jobs),
    load_program(), release(), tokenizer(), encode(text), check(job) and, for an
    embedding model, to_float(vector)."""

    name: str                   # the on-chain name (ModelRegistry.model_id_by_name)
    kind: str                   # CHAT or EMBEDDING
    vocab: int                  # token ids lie in [0, vocab)
    dimensions: int             # embedding: output dimensions; chat: hidden width
    context: int                # positions a job may use (prompt + new tokens - 1 for chat; tokens for embeddings)
    hooks: str                  # module path of the model's factories
    package: str = ""           # the installed distribution that carries its weights
    price_wei: int = 0          # suggested registry price per 1,000 tokens (devnet, test networks)
    sampling: Sampling | None = None
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.kind not in (CHAT, EMBEDDING):
            raise ValueError(f"model {self.name}: kind must be {CHAT!r} or {EMBEDDING!r}, not {self.kind!r}")

    @property
    def parts(self) -> ModuleType:
        return importlib.import_module(self.hooks)

    def check(self, job) -> None:
        """Raise JobRefused when the job has no honest trace for this model."""
        self.parts.check(job)

    def load_engine(self):
        """The fast engine (weights loaded: seconds and gigabytes for a chat model)."""
        return self.parts.load_engine()

    def run_batch(self, engine, jobs: list) -> list:
        """Checked jobs in one pass: per job (output tensor, payload) or its exception."""
        return self.parts.run_batch(engine, jobs)

    def load_program(self):
        """The integer program (the dispute game's; its model_root is the on-chain identity)."""
        return self.parts.load_program()

    def release(self) -> None:
        """Drop this process's cached program and engine (their memory goes back)."""
        self.parts.release()

    def tokenizer(self):
        """The model's tokenizer (loaded once)."""
        return self.parts.tokenizer()

    def chat_template(self) -> str:
        """A chat model's template (Jinja, as its file carries it)."""
        if self.kind != CHAT:
            raise ValueError(f"{self.name} is an {self.kind} model: it has no chat template")
        return self.parts.chat_template()

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.parts.encode(text)]

    def to_float(self, vector):
        """Presentation only: an embedding's integers as the floats the API returns."""
        return self.parts.to_float(vector)
