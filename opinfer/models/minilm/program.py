"""all-MiniLM-L6-v2 as an op program (opinfer/semantics/ops.py) for disputes.

The fast engine (`minilm.IntMiniLM.forward`) and this program compute the
same bits (tests/unit/test_model_programs.py); the program exists so that a
trace, state roots and one-step witnesses can be built for any job, and so
that the model has an on-chain identity (`model_root`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from opinfer.models.minilm import engine as mm
from opinfer.models.minilm.spec import NAME
from opinfer.semantics.builder import ProgramBuilder
from opinfer.semantics.ops import (CONTEXT, DENSE, EMBED_SUM, INPUT, L2NORM, LAYER_NORM, LOOKUP, POOL, RESIDUAL, SCORES,
                                   SOFTMAX, TABLE_WIDTH, TRANSPOSE, Slot, dim, ref)
from opinfer.semantics.program import ONE_STEP, JobLimits, Program
from opinfer.semantics.quant import INT32

L = dim(0, 1)          # rows = the job's token count


def _dense(b: ProgramBuilder, x: Slot, layer: mm.Dense, out_cols: int) -> Slot:
    params = b.weight(np.stack([layer.bias, np.broadcast_to(layer.mult, layer.bias.shape)], axis=1))
    return b.op(DENSE, L, dim(out_cols), [x, b.weight(layer.w), params], [layer.shift, layer.lo, layer.hi])


def _layer_norm(b: ProgramBuilder, x: Slot, ln: mm.LayerNorm, cols: int) -> Slot:
    return b.op(LAYER_NORM, L, dim(cols), [x, b.weight(np.stack([ln.gain, ln.beta], axis=1))], [ln.eps])


def build_program(model: mm.IntMiniLM) -> Program:
    b = ProgramBuilder()
    width = model.word.shape[1]
    heads, head_dim = model.heads, width // model.heads
    t0 = Slot(ref(INPUT), dim(1), dim(0, 1, 0, 1))   # L + tokens_at words
    e = b.op(EMBED_SUM, L, dim(width), [t0, b.weight(model.word), b.weight(model.pos), b.weight(model.typ.reshape(1, -1))])
    x = _layer_norm(b, e, model.ln0, width)
    for layer in model.layers:
        q, k, v = (_dense(b, x, d, width) for d in (layer.q, layer.k, layer.v))
        scores = b.op(SCORES, dim(0, heads), L, [q, k], [head_dim, 1])
        probs = b.op(SOFTMAX, dim(0, heads), L, [scores], [layer.score_mult, layer.score_shift, mm.PROB_ONE])
        vt = b.op(TRANSPOSE, dim(width), L, [v])
        ctx = b.op(CONTEXT, L, dim(width), [probs, vt], [head_dim, 1, layer.ctx_mult, layer.ctx_shift, -128, 127])
        o = _dense(b, ctx, layer.o, width)
        r1 = b.op(RESIDUAL, L, dim(width), [o, x, b.weight(layer.x_mult)], [layer.x_shift, *INT32])
        h = _layer_norm(b, r1, layer.ln1, width)
        up = _dense(b, h, layer.up, layer.up.w.shape[0])
        table = np.asarray(layer.gelu, dtype=np.int64).reshape(-1, TABLE_WIDTH)
        g = b.op(LOOKUP, L, up.cols, [up, b.weight(table)], [mm.GELU_HALF])
        down = _dense(b, g, layer.down, width)
        r2 = b.op(RESIDUAL, L, dim(width), [down, h, b.weight(layer.h_mult)], [layer.h_shift, *INT32])
        x = _layer_norm(b, r2, layer.ln2, width)
    xt = b.op(TRANSPOSE, dim(width), L, [x])
    pooled = b.op(POOL, dim(1), dim(width), [xt, b.weight(model.pool_mult)])
    b.op(L2NORM, dim(1), dim(width), [pooled], [mm.OUT_BITS])
    # The spec's refusal rule (opinfer/models/minilm/parts.py), committed in the model root so that
    # StepVerifier.job_shape refuses the same jobs: at most one token per row
    # of the position table, ids below the vocabulary, no new tokens, no stops.
    job_limits = JobLimits(positions=model.pos.shape[0], vocab=model.word.shape[0], min_new=0, max_new=0,
                           max_stop_words=0)
    return Program(b.ops, b.weights, b.widths, ONE_STEP, NAME, job_limits)


@lru_cache(maxsize=1)
def default_program() -> Program:
    return build_program(mm.IntMiniLM.build())
