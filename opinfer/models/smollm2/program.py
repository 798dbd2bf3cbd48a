"""SmolLM2-135M-Instruct's decode step as an op program: the llama family's
(opinfer/models/llama/program.py) over its file, named and limited by its spec
(4,096 positions, at most 4,095 new tokens; 527 ops per step)."""

from __future__ import annotations

from functools import lru_cache

from opinfer.models.llama import program as family
from opinfer.models.smollm2 import spec
from opinfer.semantics.program import JobLimits, Program

NAME, VOCAB = spec.NAME, spec.VOCAB
MAX_CONTEXT = spec.CONTEXT          # the positions a job may use (docs/ops.md, "Long context")
CONTEXT_CHUNKS = -(-MAX_CONTEXT // family.TABLE_WIDTH)
MAX_NEW = spec.MAX_NEW


def build_program(model) -> Program:
    """The program of SmolLM2 (or of a model cut from it: the toy decoders), with SmolLM2's limits."""
    return family.build_program(model, NAME, MAX_CONTEXT, MAX_NEW)


def limits(vocab: int = VOCAB) -> JobLimits:
    return family.limits(vocab, MAX_CONTEXT, MAX_NEW)


def check_job(job, vocab: int = VOCAB) -> None:
    family.check_job(job, vocab, MAX_CONTEXT, MAX_NEW)


engine_tokens, register_tokens = family.engine_tokens, family.register_tokens


@lru_cache(maxsize=1)
def default_program() -> Program:
    from opinfer.models.smollm2 import parts  # noqa: F401  (registers the engine's tokens for this program's traces)
    from opinfer.models.smollm2.engine import default_model

    return build_program(default_model())
