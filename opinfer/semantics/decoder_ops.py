"""The decoder's op classes (opcodes 13..27 and 32; docs/ops.md, "Decoder ops").

A decoder program processes one position per step: step s reads token s
and produces the token at position s + 1. The rules here are the vectorised
twins of contracts/DecoderOps.vy and, for the arithmetic, of
opinfer/semantics/elements.py; each op also names the rows an element reads
(None: the slot is not read, NOT_READ in the witness).

Importing opinfer.semantics.ops registers these in its RUN and READS tables.
"""

from __future__ import annotations

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.semantics import blocks
from opinfer.semantics import elements as el
from opinfer.semantics import ops as _ops
from opinfer.semantics import quant

PAD = -1
ROPE_BITS = el.ROPE_BITS
SQUARE_BITS = el.SQUARE_BITS
NORM_BITS = el.NORM_BITS
TEMPERATURE, TOP_P, SEED_AT, STOP_COUNT, STOPS_AT = 3, 4, 5, 9, 10   # words of T_0
VERSION_PENALTIES = 2


def _g(ctx) -> int:
    """Index of the generated token that step s produces (negative in the prompt)."""
    return ctx.step + 1 - ctx.tokens


def _word(t0: np.ndarray, k: int) -> int:
    return int(t0[0, k])


def _seed(t0: np.ndarray) -> int:
    return sum(_word(t0, SEED_AT + i) << (16 * (3 - i)) for i in range(4))


def stop_sequences(t0: np.ndarray, ctx) -> list[list[int]]:
    """The job's stop sequences: non-empty runs of T_0[10..10 + S) between 0xFFFF words (S = T_0[9])."""
    out, cur = [], []
    for w in t0[0, STOPS_AT:STOPS_AT + _word(t0, STOP_COUNT)]:
        if int(w) == 0xFFFF:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(int(w))
    return out


def _int16(word: int) -> int:
    return word - (1 << 16) if word >= 1 << 15 else word


def penalty_params(t0: np.ndarray) -> tuple[int, int, tuple[tuple[int, int], ...]] | None:
    """A version-2 job's (presence_q, frequency_q, bias entries) (T_0[10 + S ..]:
    presence_q, frequency_q, B, then B (id, bias_q) pairs, int16 words); None for version 1."""
    if _word(t0, 0) != VERSION_PENALTIES:
        return None
    at = STOPS_AT + _word(t0, STOP_COUNT)
    bias = tuple((_word(t0, at + 3 + 2 * k), _int16(_word(t0, at + 4 + 2 * k))) for k in range(_word(t0, at + 2)))
    return _int16(_word(t0, at)), _int16(_word(t0, at + 1)), bias


def bit_length(x: np.ndarray) -> np.ndarray:
    """Exact bit lengths of non-negative integers below 2^53."""
    return np.where(x > 0, np.frexp(np.asarray(x, dtype=np.float64))[1], 0).astype(np.int64)


# ---------------------------------------------------------------- vectorised rules

def _token(ins, ctx) -> int:
    """The token step s reads: from T_0 in the prompt, else the previous step's NEXT."""
    t0, prev_next = ins[0], ins[1]
    return _word(t0, ctx.tokens_at + ctx.step) if ctx.step < ctx.tokens else int(prev_next[0, 0])


def _embed_token(op, ins, ctx):
    """The token's row of Q8_0 codes times its blocks' scales D, requant(D q, 1, shift, lo, hi)."""
    codes, dscale = ins[2], ins[3]
    shift, lo, hi = op.params[:3]
    token = _token(ins, ctx)
    if not 0 <= token < codes.shape[0]:
        raise CommitmentError(f"token {token} outside the vocabulary of {codes.shape[0]}")
    row = codes[token].reshape(-1, blocks.BLOCK) * dscale[token][:, None]
    return quant.requant(row.reshape(1, -1), 1, shift, lo, hi)


def _rms_norm(op, ins, ctx):
    x, gain = ins
    eps, lo, hi = op.params[:3]
    d = np.maximum(bit_length(np.abs(x).max(-1, keepdims=True)) - SQUARE_BITS, 0)
    xs = x >> d
    ms = quant.round_div((xs * xs).sum(-1, keepdims=True), x.shape[-1]) + (eps >> (2 * d))
    rms = np.maximum(quant.isqrt(ms), 1)
    return np.clip(quant.round_div(x * gain[:, 0], rms << (NORM_BITS + d)), lo, hi)


def _dense_block(op, ins, ctx):
    """elements.block_dense on every output: x rows times the weight rows (codes, D, and M
    for Q4_1); params fmt, F, mult, split, (shift, lo, hi) below split, (shift, lo, hi) above."""
    p = (tuple(op.params) + (0,) * 10)[:10]
    fmt, fold, mult, split = p[:4]
    x, codes, dscale = ins[:3]
    mscale = ins[3] if fmt == blocks.Q4_1 else np.zeros_like(dscale)
    n = codes.shape[0]
    first = np.arange(n) < (split or n)
    shift = np.where(first, p[4], p[7])
    lo, hi = np.where(first, p[5], p[8]), np.where(first, p[6], p[9])
    native = _native_dense(fmt, codes, dscale, mscale, mult, shift, lo, hi)
    if native is not None:
        out = native(x)
    else:
        xq, a, d = blocks.quantize_rows(x)
        acc = blocks.block_acc_raw(xq, a, codes, dscale, mscale)
        out = blocks.requant_shifted(acc, d, mult, shift, lo, hi)
    return out.reshape(-1, fold) if fold else out


# A faster kernel for DENSE_BLOCK's products with the same bits, registered by the
# engine (opinfer/engine/native_dense.py: the native kernels; semantics imports no
# engine): kernel(fmt, codes, D, M, mult, shift, lo, hi) -> a callable on x, or None.
dense_kernel = None
_NATIVE: dict = {}          # id of the codes array -> (the arrays, their kernel)
_NATIVE_KEPT = 256


def _native_dense(fmt, codes, dscale, mscale, mult, shift, lo, hi):
    """The registered kernel of a DENSE_BLOCK's weights, built once per weight
    tensor, so that a long job's trace is not bound by numpy products; None
    without one (numpy then)."""
    if dense_kernel is None:
        return None
    key = (id(codes), id(dscale), fmt, mult, shift.tobytes(), lo.tobytes(), hi.tobytes())
    hit = _NATIVE.get(key)
    if hit is not None and hit[0][0] is codes and hit[0][1] is dscale:
        return hit[1]
    dense = dense_kernel(fmt, codes, dscale, mscale, mult, shift, lo, hi)
    if len(_NATIVE) >= _NATIVE_KEPT:
        _NATIVE.pop(next(iter(_NATIVE)))
    _NATIVE[key] = ((codes, dscale), dense)
    return dense


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


def _penalty(op, ins, ctx):
    """quant.penalise of the logits [NC, 256] (token 256 r + c) with the job's
    penalties and bias, counting the ids generated before this step: the
    previous step's GEN row [0, g) (none in the prompt or at step 0)."""
    z, t0, prev_gen = ins
    params = penalty_params(t0)
    if params is None:
        return z.copy()
    g = _g(ctx)
    generated = prev_gen[0, :g] if prev_gen is not None and g > 0 else []
    return quant.penalise(z.reshape(-1), *params, generated).reshape(z.shape)


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
    return [0, None, token, token] if ctx.step < ctx.tokens else [None, 0, token, token]


def _reads_row_and_channel(op, r, c, ins, ctx):
    return [r, c]


def _reads_dense_block(op, r, c, ins, ctx):
    fmt, fold = op.params[:2]
    n = r * fold + c if fold else c
    return [0 if fold else r, n, n] + ([n] if fmt == blocks.Q4_1 else [])


def _reads_rope(op, r, c, ins, ctx):
    return [0, ctx.step]


def _reads_append(op, r, c, ins, ctx):
    cached = (c if op.params[0] else r) < ctx.step
    return [r, None] if cached else [None, 0]


def _reads_swiglu(op, r, c, ins, ctx):
    return [0, (int(ins[0][0, c]) + op.params[0]) // _ops.TABLE_WIDTH]


def _reads_penalty(op, r, c, ins, ctx):
    """logits row r, T_0, the previous step's GEN (not at step 0)."""
    return [r, 0, None if ctx.step == 0 else 0]


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
    _ops.EMBED_TOKEN: _embed_token, _ops.RMS_NORM: _rms_norm, _ops.DENSE_BLOCK: _dense_block, _ops.ROPE: _rope,
    _ops.APPEND: _append, _ops.SWIGLU: _swiglu, _ops.CHUNK_ARGMAX: _chunk_argmax,
    _ops.SAMPLE_WEIGHTS: _sample_weights, _ops.MASKED_SUMS: _masked_sums, _ops.BISECT: _bisect, _ops.PICK: _pick,
    _ops.PICK_TOKEN: _pick_token, _ops.NEXT: _next, _ops.MATCH: _match, _ops.GEN: _gen, _ops.PENALTY: _penalty,
})
_ops.READS.update({
    _ops.EMBED_TOKEN: _reads_embed_token, _ops.RMS_NORM: _reads_row_and_channel,
    _ops.DENSE_BLOCK: _reads_dense_block, _ops.ROPE: _reads_rope, _ops.APPEND: _reads_append,
    _ops.SWIGLU: _reads_swiglu, _ops.CHUNK_ARGMAX: _reads_chunk, _ops.SAMPLE_WEIGHTS: _reads_weights,
    _ops.MASKED_SUMS: _reads_masked_sums, _ops.BISECT: _reads_all_first, _ops.PICK: _reads_all_first,
    _ops.PICK_TOKEN: _reads_pick_token, _ops.NEXT: _reads_all_first, _ops.MATCH: _reads_prev_first,
    _ops.GEN: _reads_prev_first, _ops.PENALTY: _reads_penalty,
})
