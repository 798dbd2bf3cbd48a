"""The decoder's op classes (opcodes 13..27; docs/ops.md, "Decoder ops").

A decoder program processes one position per step: step s reads token s
and produces the token at position s + 1. The rules here are the vectorised
twins of contracts/DecoderOps.vy and, for the arithmetic, of
opinfer/engine/elements.py; each op also names the rows an element reads
(None: the slot is not read, NOT_READ in the witness).

Importing opinfer.trace.ops registers these in its RUN and READS tables.
"""

from __future__ import annotations

import numpy as np

from opinfer.engine import elements as el
from opinfer.engine import quant
from opinfer.errors import CommitmentError
from opinfer.trace import ops as _ops

PAD = -1
ROPE_BITS = el.ROPE_BITS
SQUARE_BITS = el.SQUARE_BITS
NORM_BITS = el.NORM_BITS
TEMPERATURE, TOP_P, SEED_AT, STOPS_AT = 3, 4, 5, 10   # words of T_0


def _g(ctx) -> int:
    """Index of the generated token that step s produces (negative in the prompt)."""
    return ctx.step + 1 - ctx.tokens


def _word(t0: np.ndarray, k: int) -> int:
    return int(t0[0, k])


def _seed(t0: np.ndarray) -> int:
    return sum(_word(t0, SEED_AT + i) << (16 * (3 - i)) for i in range(4))


def stop_sequences(t0: np.ndarray, ctx) -> list[list[int]]:
    """The job's stop sequences: non-empty runs of T_0[10..ta) between 0xFFFF words."""
    out, cur = [], []
    for w in t0[0, STOPS_AT:ctx.tokens_at]:
        if int(w) == 0xFFFF:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(int(w))
    return out


def bit_length(x: np.ndarray) -> np.ndarray:
    """Exact bit lengths of non-negative integers below 2^53."""
    return np.where(x > 0, np.frexp(np.asarray(x, dtype=np.float64))[1], 0).astype(np.int64)


# ---------------------------------------------------------------- float copies of weights

_FLOAT_T: dict[int, tuple[np.ndarray, np.ndarray, int, np.ndarray]] = {}


def _weights_t(w: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """(W^T as float32, max |W|, max |W| per input index) for exact products, cached per weight array."""
    hit = _FLOAT_T.get(id(w))
    if hit is None or hit[0] is not w:
        wt = np.ascontiguousarray(w.T.astype(np.float32))
        hit = (w, wt, int(np.abs(w).max()) if w.size else 0,
               np.abs(w).max(0).astype(np.int64) if w.size else np.zeros(w.shape[1], dtype=np.int64))
        _FLOAT_T[id(w)] = hit
    return hit[1], hit[2], hit[3]


# ---------------------------------------------------------------- vectorised rules

def _token(ins, ctx) -> int:
    """The token step s reads: from T_0 in the prompt, else the previous step's NEXT."""
    t0, prev_next = ins[0], ins[1]
    return _word(t0, ctx.tokens_at + ctx.step) if ctx.step < ctx.tokens else int(prev_next[0, 0])


def _embed_token(op, ins, ctx):
    table = ins[2]
    token = _token(ins, ctx)
    if not 0 <= token < table.shape[0]:
        raise CommitmentError(f"token {token} outside the vocabulary of {table.shape[0]}")
    return table[token:token + 1].copy()


def _rms_norm(op, ins, ctx):
    x, gain = ins
    eps, lo, hi = op.params[:3]
    d = np.maximum(bit_length(np.abs(x).max(-1, keepdims=True)) - SQUARE_BITS, 0)
    xs = x >> d
    ms = quant.round_div((xs * xs).sum(-1, keepdims=True), x.shape[-1]) + (eps >> (2 * d))
    rms = np.maximum(quant.isqrt(ms), 1)
    return np.clip(quant.round_div(x * gain[:, 0], rms << (NORM_BITS + d)), lo, hi)


def _dense_wide(op, ins, ctx):
    x, w, p = ins
    in_bits, fold = op.params[:2]
    d = np.maximum(bit_length(np.abs(x).max(-1, keepdims=True)) - in_bits, 0)
    half = np.where(d > 0, np.int64(1) << np.maximum(d - 1, 0), 0)
    xs = (x + half) >> d
    wt, w_max, row_max = _weights_t(w)
    dot = quant.exact_matmul_blocked(xs, wt, 1 << in_bits, w_max, row_max)
    out = _finish(dot, d, p[:, 0], p[:, 1], p[:, 2], p[:, 3])
    return out.reshape(-1, fold) if fold else out


def _finish(dot, d, mult, shift, lo, hi):
    """requant(dot << d, mult, shift, lo, hi) per column, computed as
    (dot * mult + 2^(e-1)) >> e with e = shift - d (the same number), or an
    exact left shift when e <= 0 (then the rounding term vanishes)."""
    if np.abs(dot).max(initial=0) * np.abs(mult).max(initial=0) >= 1 << 62:
        raise CommitmentError("dense_wide: product beyond int64")
    prod = dot * mult
    e = shift - d
    right = (prod + (np.int64(1) << np.maximum(e - 1, 0))) >> np.maximum(e, 0)
    left = np.clip(prod, lo, hi) << np.maximum(-e, 0)
    return np.clip(np.where(e >= 1, right, left), lo, hi)


def _rope(op, ins, ctx):
    x, table = ins
    (head_dim,) = op.params[:1]
    cols = _ops.dim_value(op.cols, ctx)
    if ctx.step >= table.shape[0]:
        raise CommitmentError(f"position {ctx.step} beyond the RoPE table of {table.shape[0]}")
    half_d = head_dim // 2
    cos, sin = table[ctx.step, :half_d], table[ctx.step, half_d:head_dim]
    heads = x[0, :cols].reshape(-1, head_dim)
    a, b = heads[:, 0::2], heads[:, 1::2]
    rnd = 1 << (ROPE_BITS - 1)
    out = np.empty_like(heads)
    out[:, 0::2] = (a * cos - b * sin + rnd) >> ROPE_BITS
    out[:, 1::2] = (a * sin + b * cos + rnd) >> ROPE_BITS
    return out.reshape(1, cols)


def _append(op, ins, ctx):
    prev, src = ins
    transposed, offset = op.params[:2]
    if transposed:
        width = _ops.dim_value(op.rows, ctx)
        new = src[0, offset:offset + width].reshape(-1, 1)
        return new if prev is None else np.concatenate([prev, new], axis=1)
    width = _ops.dim_value(op.cols, ctx)
    new = src[:1, offset:offset + width]
    return new.copy() if prev is None else np.concatenate([prev, new], axis=0)


def _swiglu(op, ins, ctx):
    x, table = ins
    (offset,) = op.params[:1]
    h = _ops.dim_value(op.cols, ctx)
    idx = x[0, :h] + offset
    flat = table.reshape(-1)
    if idx.min() < 0 or idx.max() >= flat.size:
        raise CommitmentError("swiglu: gate outside the table")
    return (flat[idx] * x[0, h:2 * h]).reshape(1, h)


def _chunk_argmax(op, ins, ctx):
    (z,) = ins
    index = np.arange(z.size, dtype=np.int64).reshape(z.shape)
    return ((z << el.INDEX_BITS) + (el.INDEX_MASK - index)).max(1).reshape(1, -1)


def _top(packs: np.ndarray) -> int:
    return el.packed_value(int(packs.max()))


def _sample_weights(op, ins, ctx):
    z, packs, t0 = ins
    temperature = _word(t0, TEMPERATURE)
    if temperature == 0:
        return np.zeros_like(z)
    if temperature > el.TEMPERATURE_MILLI_MAX:
        raise CommitmentError(f"temperature_milli {temperature} above {el.TEMPERATURE_MILLI_MAX}: not verifiable")
    u = np.minimum(quant.round_div((_top(packs) - z) * 1000, temperature << 8), el.EXP_INPUT_MAX)
    return quant.exp_neg(u)


def _tau(bounds: np.ndarray, mode: int) -> int:
    lo, hi = int(bounds[0, 0]), int(bounds[0, 1])
    return (lo + hi + 1) >> 1 if mode == 0 else lo


def _masked_sums(op, ins, ctx):
    w, bounds = ins
    tau = _tau(bounds, op.params[0])
    return np.where(w >= tau, w, 0).sum(1).reshape(1, -1)


def _bisect(op, ins, ctx):
    sums, bounds, totals, t0 = ins
    lo, hi = el.bisect_step(int(bounds[0, 0]), int(bounds[0, 1]), [int(v) for v in sums[0]],
                            int(totals.sum()), _word(t0, TOP_P) + 1)
    return np.array([[lo, hi]], dtype=np.int64)


def _pick(op, ins, ctx):
    kept, t0 = ins
    total = int(kept.sum())
    if _word(t0, TEMPERATURE) == 0 or total == 0:
        return np.zeros((1, 2), dtype=np.int64)
    r = el.draw(_seed(t0), max(_g(ctx), 0), total)
    return np.array([el.pick_chunk([int(v) for v in kept[0]], r)], dtype=np.int64)


def _pick_token(op, ins, ctx):
    pick, w, bounds, t0 = ins
    if _word(t0, TEMPERATURE) == 0:
        return np.zeros((1, 1), dtype=np.int64)
    j, rest = int(pick[0, 0]), int(pick[0, 1])
    i = el.pick_in_chunk([int(v) for v in w[j]], int(bounds[0, 0]), rest)
    return np.array([[el.CHUNK_WIDTH * j + i]], dtype=np.int64)


def _next(op, ins, ctx):
    t0, packs, picked = ins
    if ctx.step + 1 < ctx.tokens:
        token = _word(t0, ctx.tokens_at + ctx.step + 1)
    elif _word(t0, TEMPERATURE) == 0:
        token = el.argmax_token(int(packs.max()))
    else:
        token = int(picked[0, 0])
    return np.array([[token]], dtype=np.int64)


def _match(op, ins, ctx):
    t0, prev_gen, nxt = ins
    g = _g(ctx)
    if g < 0:
        return np.zeros((1, 1), dtype=np.int64)
    seq = ([int(v) for v in prev_gen[0, :g]] if prev_gen is not None else []) + [int(nxt[0, 0])]
    hit = any(len(q) <= len(seq) and seq[len(seq) - len(q):] == q for q in stop_sequences(t0, ctx))
    return np.array([[int(hit)]], dtype=np.int64)


def _gen(op, ins, ctx):
    prev, nxt, match = ins
    m = _ops.dim_value(op.cols, ctx) - 1
    if prev is None:
        prev = np.array([[PAD] * m + [0]], dtype=np.int64)
    g = _g(ctx)
    out = np.full((1, m + 1), PAD, dtype=np.int64)
    out[0, m] = 0
    if g < 0:
        return out
    done = int(prev[0, m])
    out[0, :g] = prev[0, :g]
    out[0, g] = PAD if done else int(nxt[0, 0])
    out[0, m] = 1 if done or int(match[0, 0]) else 0
    return out


# ---------------------------------------------------------------- rows an element reads

def _reads_embed_token(op, r, c, ins, ctx):
    token = _token(ins, ctx)
    return [0, None, token] if ctx.step < ctx.tokens else [None, 0, token]


def _reads_row_and_channel(op, r, c, ins, ctx):
    return [r, c]


def _reads_dense_wide(op, r, c, ins, ctx):
    fold = op.params[1]
    n = r * fold + c if fold else c
    return [0 if fold else r, n, n]


def _reads_rope(op, r, c, ins, ctx):
    return [0, ctx.step]


def _reads_append(op, r, c, ins, ctx):
    cached = (c if op.params[0] else r) < ctx.step
    return [r, None] if cached else [None, 0]


def _reads_swiglu(op, r, c, ins, ctx):
    return [0, (int(ins[0][0, c]) + op.params[0]) // _ops.TABLE_WIDTH]


def _reads_chunk(op, r, c, ins, ctx):
    return [c]


def _reads_weights(op, r, c, ins, ctx):
    return [r, 0, 0]


def _reads_masked_sums(op, r, c, ins, ctx):
    return [c, 0]


def _reads_all_first(op, r, c, ins, ctx):
    return [0] * len(op.slots)


def _reads_pick_token(op, r, c, ins, ctx):
    return [0, int(ins[0][0, 0]), 0, 0]


def _reads_prev_first(op, r, c, ins, ctx):
    """Slot 0 or 1 is the previous step's row (not read at step 0), the others row 0."""
    prev = 1 if op.code == _ops.MATCH else 0
    return [None if (i == prev and ctx.step == 0) else 0 for i in range(len(op.slots))]


_ops.RUN.update({
    _ops.EMBED_TOKEN: _embed_token, _ops.RMS_NORM: _rms_norm, _ops.DENSE_WIDE: _dense_wide, _ops.ROPE: _rope,
    _ops.APPEND: _append, _ops.SWIGLU: _swiglu, _ops.CHUNK_ARGMAX: _chunk_argmax,
    _ops.SAMPLE_WEIGHTS: _sample_weights, _ops.MASKED_SUMS: _masked_sums, _ops.BISECT: _bisect, _ops.PICK: _pick,
    _ops.PICK_TOKEN: _pick_token, _ops.NEXT: _next, _ops.MATCH: _match, _ops.GEN: _gen,
})
_ops.READS.update({
    _ops.EMBED_TOKEN: _reads_embed_token, _ops.RMS_NORM: _reads_row_and_channel,
    _ops.DENSE_WIDE: _reads_dense_wide, _ops.ROPE: _reads_rope, _ops.APPEND: _reads_append,
    _ops.SWIGLU: _reads_swiglu, _ops.CHUNK_ARGMAX: _reads_chunk, _ops.SAMPLE_WEIGHTS: _reads_weights,
    _ops.MASKED_SUMS: _reads_masked_sums, _ops.BISECT: _reads_all_first, _ops.PICK: _reads_all_first,
    _ops.PICK_TOKEN: _reads_pick_token, _ops.NEXT: _reads_all_first, _ops.MATCH: _reads_prev_first,
    _ops.GEN: _reads_prev_first,
})
