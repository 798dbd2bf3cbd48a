"""A llama-family engine from its built program's integers alone (the inverse of
program.build_program): the GGUF blocks (codes, D, M), the gains, the Q/K/V biases,
the RoPE and SiLU tables and every scale of the ops. A node that loads a built
program file (opinfer/models/built.py) rebuilds the engine with `model_from_program`
and computes the registered model's bits without the GGUF file; rebuilding the
program from that engine gives the same model root (tests/unit/test_llama_gguf.py)."""

from __future__ import annotations

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.models.llama import engine as sm
from opinfer.semantics import blocks as bk
from opinfer.semantics.ops import (APPEND, CONTEXT, DENSE_BLOCK, EMBED_TOKEN, EXP_SUMS, PROBS, RESIDUAL, RMS_NORM,
                                   ROPE, SCORES, SWIGLU, WEIGHT, Op)
from opinfer.semantics.program import Program
from opinfer.semantics.quant import INT32

_INDEX = (1 << 128) - 1


class _Cursor:
    """Walks a program's ops in order, checking each one's opcode."""

    def __init__(self, program: Program):
        self.program, self.at = program, 0

    def peek(self) -> int:
        return self.program.ops[self.at].code if self.at < len(self.program.ops) else -1

    def take(self, code: int) -> Op:
        if self.peek() != code:
            raise CommitmentError(f"op {self.at}: not the op {code} a llama-family step has there")
        self.at += 1
        return self.program.ops[self.at - 1]

    def w(self, op: Op, slot: int) -> np.ndarray:
        ref = op.slots[slot].ref
        if ref >> 128 != WEIGHT:
            raise CommitmentError(f"op {self.at - 1}: slot {slot} is not a weight")
        return self.program.weights[ref & _INDEX]


def _within_bound(fmt: int, codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> bool:
    """pack_gguf's cheap accumulator bound (sum_i |D q_i + M| <= |D| sum_i |q_i| + 32 |M| per
    block, an upper bound of QMatrix.check_bounds' quantity): True when it holds, so the exact
    check can be skipped; False leaves the matrix to the exact check."""
    n, k = codes.shape
    worst = 0
    for start in range(0, n, 2048):         # bounded temporaries
        q = codes[start:start + 2048].reshape(-1, k // bk.BLOCK, bk.BLOCK)
        qsum = (q.sum(-1, dtype=np.int64) if fmt == bk.Q4_1 else np.abs(q.astype(np.int16)).sum(-1, dtype=np.int64))
        bound = np.abs(d[start:start + 2048]) * qsum + bk.BLOCK * np.abs(m[start:start + 2048])
        worst = max(worst, int(bound.sum(-1).max(initial=0)))
    return worst * (bk.ACT_MAX << bk.ROW_BITS) < bk.ACC_LIMIT


def model_from_program(program: Program, cls=sm.IntLlama) -> sm.IntLlama:
    cur = _Cursor(program)
    emb = cur.take(EMBED_TOKEN)
    if tuple(emb.params[:3]) != (sm.EMBED_SHIFT, *INT32):
        raise CommitmentError("the embedding's scale is not the engine's")
    matrices: dict = {}

    def matrix(fmt: int, codes_ref: Op, slot: int) -> bk.QMatrix:
        """The block matrix of (codes, D, M) slots slot.. of an op, widened here (the program may
        come at its stored widths: built.ProgramView), checked once per weight tensor."""
        key = (fmt, codes_ref.slots[slot].ref, codes_ref.slots[slot + 1].ref)
        if key not in matrices:
            codes = cur.w(codes_ref, slot).astype(np.uint8 if fmt == bk.Q4_1 else np.int8)
            d = cur.w(codes_ref, slot + 1).astype(np.int64)
            m = cur.w(codes_ref, slot + 2).astype(np.int64) if fmt == bk.Q4_1 else np.zeros_like(d)
            matrices[key] = bk.QMatrix(fmt, codes, d, m, checked=_within_bound(fmt, codes, d, m))
        return matrices[key]

    embed = matrix(bk.Q8_0, emb, 2)

    def gain(op: Op) -> np.ndarray:
        return cur.w(op, 1)[:, 0].astype(np.int64)

    def dense(op: Op) -> sm.Dense:
        fmt, _fold, mult, split, *groups = op.params[:10]
        return sm.Dense.of(matrix(fmt, op, 1), *groups[:3], split, *groups[3:6], mult=mult)

    layers, eps, rope, silu, score = [], None, None, None, None
    heads = kv_heads = head_dim = None
    while cur.peek() == RMS_NORM and program.ops[cur.at + 1].code == DENSE_BLOCK \
            and program.ops[cur.at + 2].code in (ROPE, RESIDUAL):
        norm = cur.take(RMS_NORM)
        eps = norm.params[0]
        qkv = dense(cur.take(DENSE_BLOCK))
        bias = None
        if cur.peek() == RESIDUAL:
            add = cur.take(RESIDUAL)
            bias = cur.w(add, 1)[0].astype(np.int64)
            if tuple(add.params[:3]) != (0, *INT32) or not np.all(cur.w(add, 2) == 1):
                raise CommitmentError("the Q/K/V bias add is not the engine's")
        rope_op = cur.take(ROPE)
        rope, head_dim = cur.w(rope_op, 1).astype(np.int64), rope_op.params[0]
        cur.take(APPEND)
        cur.take(APPEND)
        scores = cur.take(SCORES)
        heads, group = scores.rows & 0xFFFFFFFF, scores.params[1]
        kv_heads = heads // group
        sums, probs, ctx = cur.take(EXP_SUMS), cur.take(PROBS), cur.take(CONTEXT)
        score = tuple(sums.params[:2])
        if tuple(probs.params[:3]) != (*score, sm.PROB_ONE) or \
                tuple(ctx.params[2:6]) != (sm.CTX_MULT, sm.CTX_SHIFT, *INT32):
            raise CommitmentError("the attention's scales are not the engine's")
        o = dense(cur.take(DENSE_BLOCK))
        cur.take(RESIDUAL)
        ffn_gain = gain(cur.take(RMS_NORM))
        gate_up = dense(cur.take(DENSE_BLOCK))
        silu = cur.w(cur.take(SWIGLU), 1).reshape(-1).astype(np.int64)
        down = dense(cur.take(DENSE_BLOCK))
        cur.take(RESIDUAL)
        layers.append(sm.Layer(gain(norm), qkv, o, ffn_gain, gate_up, down, qkv_bias=bias))
    if not layers:
        raise CommitmentError("no decoder block where a llama-family step has them")
    out_gain = gain(cur.take(RMS_NORM))
    head_op = cur.take(DENSE_BLOCK)
    head = dense(head_op)
    tied = head_op.slots[1].ref == emb.slots[2].ref and head_op.slots[2].ref == emb.slots[3].ref
    embed_matrix = None if tied else sm.Dense.of(embed, head.shift0, head.lo0, head.hi0, mult=head.mult)
    half = head_dim // 2
    model = cls(head, layers, out_gain, eps, rope[:, :half].copy(), rope[:, half:head_dim].copy(), silu, heads,
                kv_heads, head_dim, embed_matrix=embed_matrix, score_mult=score[0], score_shift=score[1])
    # A node or challenger serving from the file builds its dispute traces with this engine's
    # tokens for the generated positions (without, they run one at a time: docs/protocol.md).
    from opinfer.models.llama.program import register_tokens

    register_tokens(program.name, model)
    return model
