"""The toy decoder: SmolLM2 cut to a few blocks and tokens, a decoder
program with every decoder op class (tests and benches of the decoder game)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.program import Program


@lru_cache(maxsize=2)
def toy_decoder(layers: int = 2, vocab: int = 512):
    """(program, model): SmolLM2 cut to its first `layers` blocks and `vocab`
    tokens (real weights, so activations look real), a decoder program with
    every decoder op class and 79 ops per step; the engine runs the same
    model, so program and engine can be compared on it too."""
    from opinfer.models.smollm2 import engine as sm
    from opinfer.models.smollm2.program import build_program, register_tokens

    small = sm.default_model().sliced(layers, vocab, 64)
    program = build_program(small)
    program.name = "toy-decoder"
    register_tokens(program.name, small)
    return program, small


@lru_cache(maxsize=1)
def long_toy_decoder(positions: int = 1100):
    """(program, model): SmolLM2 cut to one block and 256 tokens with a RoPE
    table of `positions` rows: a long-context job (past 1,024 positions, so
    the attention softmax spans several chunks of 256) runs in seconds."""
    from opinfer.models.smollm2 import engine as sm
    from opinfer.models.smollm2.program import build_program, register_tokens

    small = sm.default_model().sliced(1, 256, positions)
    program = build_program(small)
    program.name = "toy-decoder-long"
    register_tokens(program.name, small)
    return program, small


def long_toy_job(tokens: int = 1030, max_tokens: int = 3) -> JobInput:
    """A sampled job of the long toy decoder: tokens + max_tokens - 1 positions."""
    ids = tuple(int(t) for t in np.random.default_rng(11).integers(0, 256, size=tokens))
    return JobInput(ids, max_tokens=max_tokens, temperature_milli=800, top_p_q=58982, seed=4242)


def toy_decoder_program() -> Program:
    return toy_decoder()[0]


def toy_decoder_job(kind: str = "greedy", tokens: int = 4, max_tokens: int = 3) -> JobInput:
    """A job for the toy decoder: "greedy", "sample" (temperature 0.9, top_p 0.8),
    "stop" (greedy with stop sequences, one of which its output hits) or
    "penalty" (greedy with a presence penalty of -1.0, a frequency penalty of
    2.0 and two logit biases: its third token is not the unpenalised one)."""
    ids = tuple(int(t) for t in np.random.default_rng(3).integers(0, 512, size=tokens))
    if kind == "greedy":
        return JobInput(ids, max_tokens=max_tokens)
    if kind == "sample":
        return JobInput(ids, max_tokens=max_tokens, temperature_milli=900, top_p_q=52429, seed=(1 << 63) + 12345)
    if kind == "stop":
        program = toy_decoder_program()
        first = int(program.run(JobInput(ids, max_tokens=1))[-1][0, 0])
        return JobInput(ids, max_tokens=max_tokens, stop_sequences=((511, 510), (first,)))
    if kind == "penalty":
        return JobInput(ids, max_tokens=max_tokens, presence_q=-4096, frequency_q=8192,
                        logit_bias=((5, 1280), (300, -25600)))
    raise ValueError(f"unknown toy job kind {kind!r}")
