"""The attention softmax over a long row, in chunks (opcodes 30, 31; docs/ops.md, "Long context").

SOFTMAX's element reads its whole scores row and takes an exp of every
entry: at 4,096 positions a one-step of about 13M gas. The two ops here
split the same rule so that no element takes more than 256 exps:

- EXP_SUMS [R, NC] (NC = the context's chunks of 256, fixed by the program):
  element (r, j) = elements.exp_sum(x[r, 256 j : 256 (j + 1)], max(x[r]), mult, shift),
  0 for a chunk past the row's end; params mult, shift. Reads x row r.
- PROBS [R, S]: element (r, c) = elements.softmax_prob(x[r, c], max(x[r]),
  sum(sums[r]), mult, shift, one); params mult, shift, one. Reads x row r and
  sums row r.

The exps are exact integers and their chunk sums add up to softmax's sum,
so PROBS equals SOFTMAX bit for bit and the engine is unchanged. Twins:
contracts/DecoderOps.vy (OP_EXP_SUMS, OP_PROBS) with ElementRules.elem_exp_sum
and elem_softmax_prob.
"""

from __future__ import annotations

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.semantics import elements as el
from opinfer.semantics import ops as _ops
from opinfer.semantics import quant

CHUNK_WIDTH = el.CHUNK_WIDTH


def exps(x: np.ndarray, mult: int, shift: int) -> np.ndarray:
    """exp_neg(requant(max(row) - x)) of every entry, row by row (softmax's numerators)."""
    top = x.max(-1, keepdims=True)
    return quant.exp_neg(quant.requant(top - x, mult, shift, 0, el.EXP_INPUT_MAX))


def _exp_sums(op, ins, ctx):
    (x,) = ins
    mult, shift = op.params[:2]
    chunks = _ops.dim_value(op.cols, ctx)
    if x.shape[1] > chunks * CHUNK_WIDTH:
        raise CommitmentError(f"exp_sums: a row of {x.shape[1]} beyond {chunks} chunks of {CHUNK_WIDTH}")
    e = np.zeros((x.shape[0], chunks * CHUNK_WIDTH), dtype=np.int64)
    e[:, :x.shape[1]] = exps(x, mult, shift)
    return e.reshape(x.shape[0], chunks, CHUNK_WIDTH).sum(-1)


def _probs(op, ins, ctx):
    x, sums = ins
    mult, shift, one = op.params[:3]
    return quant.round_div(exps(x, mult, shift) * one, sums.sum(-1, keepdims=True))


def _reads_row(op, r, c, ins, ctx):
    return [r]


def _reads_row_twice(op, r, c, ins, ctx):
    return [r, r]


_ops.RUN.update({_ops.EXP_SUMS: _exp_sums, _ops.PROBS: _probs})
_ops.READS.update({_ops.EXP_SUMS: _reads_row, _ops.PROBS: _reads_row_twice})
