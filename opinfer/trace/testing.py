"""Small programs and dishonest traces for tests, benchmarks and demos.

Nothing here is used by a node or challenger in normal operation.
"""

from __future__ import annotations

import numpy as np

from opinfer.trace.program import DotOp, Program, Trace


def toy_program(seed: int = 7) -> Program:
    """Four dot ops over int8 weights, one reading an older tensor (a skip
    connection); multipliers keep activations spread over the int8 range."""
    rng = np.random.default_rng(seed)
    shapes = [(40, 24), (24, 40), (16, 40), (8, 16)]  # (cols, k) of each weight
    weights = [rng.integers(-128, 128, size=s) for s in shapes]
    ops = [
        DotOp(src=0, weight=0, rows=2, cols=40, k=24, multiplier=3100, shift=21),
        DotOp(src=1, weight=1, rows=2, cols=24, k=40, multiplier=4500, shift=21),
        DotOp(src=1, weight=2, rows=2, cols=16, k=40, multiplier=4400, shift=21),
        DotOp(src=3, weight=3, rows=2, cols=8, k=16, multiplier=3600, shift=20),
    ]
    return Program(ops, weights)


def corrupted_trace(program: Program, x, position: int, row: int, col: int, delta: int = 1) -> Trace:
    """A cheater's trace: tensor `position` has one wrong element and every
    later op is recomputed from it, so the output looks plausible."""
    tensors = [np.asarray(x, dtype=np.int64)]
    for i, op in enumerate(program.ops):
        out = op.run(tensors, program.weights)
        if i + 1 == position:
            out = out.copy()
            out[row, col] += delta
        tensors.append(out)
    return Trace(program, tensors)
