"""all-MiniLM-L6-v2's parts: refusal rule, engine, program, tokenizer."""

from __future__ import annotations

import numpy as np

from opinfer.models.minilm.spec import NAME, POSITIONS, VOCAB
from opinfer.models.spec import JobRefused


def check(job) -> None:
    """What the program's committed limits refuse too (minilm_program: no new
    tokens, no stops, one token per position row, ids below the vocabulary)."""
    if job.max_tokens or job.stop_sequences:
        raise JobRefused("an embedding job has max_tokens 0 and no stop sequences")
    if len(job.tokens) > POSITIONS:
        raise JobRefused(f"{len(job.tokens)} tokens > {POSITIONS} positions of {NAME}")
    if not job.tokens or max(job.tokens) >= VOCAB:
        raise JobRefused(f"token ids must be in [0, {VOCAB})")


def load_engine():
    from opinfer.engine.minilm import IntMiniLM

    return IntMiniLM.build()


def run_batch(engine, jobs: list) -> list:
    """One stacked pass: each vector is bit for bit forward(ids) alone."""
    from opinfer.trace.outputs import embedding_output

    return [(embedding_output(v), {"embedding": [int(x) for x in v]})
            for v in engine.forward_batch([list(job.tokens) for job in jobs])]


def load_program():
    from opinfer.engine.minilm_program import default_program

    return default_program()


def release() -> None:
    from opinfer.engine.minilm_program import default_program

    default_program.cache_clear()


def tokenizer():
    from opinfer.engine.minilm_weights import tokenizer as wordpiece

    return wordpiece()


def encode(text: str):
    from opinfer.engine.minilm_weights import encode as wordpiece_encode

    return wordpiece_encode(text)


def to_float(vector) -> np.ndarray:
    from opinfer.engine.minilm import to_float as scale

    return scale(np.asarray(vector, dtype=np.int64))
