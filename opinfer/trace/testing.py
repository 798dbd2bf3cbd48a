"""Small programs and dishonest traces for tests, benchmarks and demos.

Nothing here is used by a node or challenger in normal operation.
"""

from __future__ import annotations

import numpy as np

from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.ops import DOT, INPUT, SAME, WEIGHT, Op, Slot, dim, ref
from opinfer.semantics.program import Program
from opinfer.trace.state import Trace

TOY_TOKENS = 14  # T_0 = 10 header words + 14 tokens = 24 columns


def dot_op(src: int, weight: int, cols: int, k: int, multiplier: int, shift: int, lo: int = -128, hi: int = 127) -> Op:
    """out[0, c] = requant(T[src] . W[weight][c]); src 0 is T_0, src j+1 is op j."""
    src_ref = ref(INPUT) if src == 0 else ref(SAME, src - 1)
    return Op(DOT, dim(1), dim(cols), (Slot(src_ref, dim(1), dim(k)), Slot(ref(WEIGHT, weight), dim(cols), dim(k), 1)),
              (multiplier, shift, lo, hi))


def toy_program(seed: int = 7) -> Program:
    """Four dot ops over int8 weights, one reading an older tensor (a skip
    connection); multipliers keep activations spread over the int8 range."""
    rng = np.random.default_rng(seed)
    shapes = [(40, 24), (24, 40), (16, 40), (8, 16)]  # (cols, k) of each weight
    weights = [rng.integers(-128, 128, size=s) for s in shapes]
    ops = [
        dot_op(0, 0, 40, 24, 3100, 31),
        dot_op(1, 1, 24, 40, 4500, 21),
        dot_op(1, 2, 16, 40, 4400, 21),
        dot_op(3, 3, 8, 16, 3600, 20),
    ]
    return Program(ops, weights, [1] * 4, name="toy-dot")


def toy_job(seed: int = 0, tokens: int = TOY_TOKENS) -> JobInput:
    rng = np.random.default_rng(seed)
    return JobInput(tuple(int(t) for t in rng.integers(0, 30000, size=tokens)), max_tokens=0,
                    seed=int(rng.integers(0, 1 << 62)))


def random_program(rng: np.random.Generator, dims: list[int]) -> Program:
    """A chain of dot ops (dims[0] -> dims[1] -> ...), int8 weights: test models.
    dims[0] is the input width (10 header words + tokens)."""
    ops, weights = [], []
    for i, (k, c) in enumerate(zip(dims[:-1], dims[1:])):
        weights.append(rng.integers(-128, 128, size=(c, k)))
        ops.append(dot_op(i, i, c, k, int(rng.integers(1 << 14, 1 << 15)), int(rng.integers(20, 24)) + (10 if i == 0 else 0)))
    return Program(ops, weights, [1] * len(weights))


def corrupted_trace(program: Program, job: JobInput, position: int, row: int, col: int, delta: int = 1) -> Trace:
    """A cheater's trace: tensor `position` has one wrong element and every
    later op is recomputed from it, so the output looks plausible."""
    def corrupt(i, out):
        if i + 1 == position:
            out = out.copy()
            out[row, col] += delta
        return out
    return Trace.of(program, job, corrupt)


def patched_trace(trace: Trace, position: int, row: int, col: int, delta: int = 1) -> Trace:
    """A cheater's trace with one wrong element in tensor `position` and every
    other tensor honest: its state roots differ from S_position on, which is
    all a dispute looks at (a large program's later ops may not even run on a
    corrupted value, e.g. a token id beyond the vocabulary)."""
    tensor = trace.tensors[position].copy()
    tensor[row, col] += delta
    return trace.patched(position, tensor)


def unpenalised_trace(program: Program, job: JobInput) -> Trace:
    """A cheater's trace that ignores the job's penalties and logit bias: every
    PENALTY op passes the logits through (the rest computed from there)."""
    from opinfer.semantics.ops import PENALTY

    last: list = [None]

    def ignore(i, out):
        if program.ops[i % program.num_ops].code == PENALTY:
            out = last[0]
        last[0] = out
        return out
    return Trace.of(program, job, ignore)
