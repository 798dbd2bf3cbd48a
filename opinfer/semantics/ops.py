"""Ops of integer programs as the StepVerifier sees them (docs/ops.md).

An op reads up to four slots (tensors of the job's state or of the model's
weights), produces one tensor, and has a rule for each element that reads
only a few rows of its slots. Every op is described by 32 words:

    [opcode, rows, cols, (ref, rows, cols, width) x 4, params x 13]

Dimensions may depend on the job: dim = c + a*L + b*s + t*ta + m*M for L
the job's token count, s the step, ta the index of the first token in T_0
and M the number of tokens to generate (dim_value). A ref names a tensor:
the job input T_0, an op of the same step, an op of the previous step, or a
weight. An element may leave a slot unread (reads gives None, the witness
NOT_READ): a previous-step slot at step 0, or a branch of its rule not taken.

For each opcode this module has the vectorised rule (`run`, used to build a
trace) and the rows an element reads (`reads`, used to build a witness);
StepVerifier.vy holds the same two things element by element.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from eth_abi import decode, encode

from opinfer.errors import CommitmentError
from opinfer.semantics import elements as el
from opinfer.semantics import quant

# ref kinds
INPUT, SAME, PREV, WEIGHT = 1, 2, 3, 4
MAX_SLOTS = 4
MAX_PARAMS = 13
DESC_WORDS = 3 + 4 * MAX_SLOTS + MAX_PARAMS

# opcodes (13..27 and 32: the decoder's, opinfer/semantics/decoder_ops.py)
DOT, EMBED_SUM, LAYER_NORM, DENSE, SCORES, SOFTMAX, TRANSPOSE, CONTEXT, RESIDUAL, LOOKUP, POOL, L2NORM = range(1, 13)
(EMBED_TOKEN, RMS_NORM, DENSE_BLOCK, ROPE, APPEND, SWIGLU, CHUNK_ARGMAX, SAMPLE_WEIGHTS, MASKED_SUMS, BISECT, PICK,
 PICK_TOKEN, NEXT, MATCH, GEN) = range(13, 28)
# a long row's attention softmax in chunks (opinfer/trace/attention_ops.py)
EXP_SUMS, PROBS = 30, 31
PENALTY = 32    # the sampler's penalties and logit bias
NAMES = {DOT: "dot", EMBED_SUM: "embed_sum", LAYER_NORM: "layer_norm", DENSE: "dense", SCORES: "scores",
         SOFTMAX: "softmax", TRANSPOSE: "transpose", CONTEXT: "context", RESIDUAL: "residual", LOOKUP: "lookup",
         POOL: "pool", L2NORM: "l2norm", EMBED_TOKEN: "embed_token", RMS_NORM: "rms_norm", DENSE_BLOCK: "dense_block",
         ROPE: "rope", APPEND: "append", SWIGLU: "swiglu", CHUNK_ARGMAX: "chunk_argmax",
         SAMPLE_WEIGHTS: "sample_weights", MASKED_SUMS: "masked_sums", BISECT: "bisect", PICK: "pick",
         PICK_TOKEN: "pick_token", NEXT: "next", MATCH: "match", GEN: "gen", EXP_SUMS: "exp_sums", PROBS: "probs", PENALTY: "penalty"}
NOT_READ = (1 << 256) - 1   # the witness's row of a slot an element does not read
TABLE_WIDTH = el.TABLE_WIDTH  # lookup tables are stored as [n / 256, 256]
LN_BITS = el.LN_BITS


def dim(c: int = 0, per_token: int = 0, per_step: int = 0, per_tokens_at: int = 0, per_gen: int = 0) -> int:
    return c | per_token << 32 | per_step << 64 | per_tokens_at << 96 | per_gen << 128


def dim_value(d: int, ctx: "JobCtx") -> int:
    m = 0xFFFFFFFF
    return ((d & m) + ((d >> 32) & m) * ctx.tokens + ((d >> 64) & m) * ctx.step
            + ((d >> 96) & m) * ctx.tokens_at + ((d >> 128) & m) * ctx.gen)


def ref(kind: int, index: int = 0) -> int:
    return kind << 128 | index


@dataclass(frozen=True)
class Slot:
    ref: int
    rows: int       # dim
    cols: int       # dim
    width: int = 32


@dataclass(frozen=True)
class JobCtx:
    """What an element's rule may depend on besides its slots."""

    tokens: int          # L
    step: int            # s
    tokens_at: int       # index of the first token in T_0
    gen: int = 0         # M = steps + 1 - L: tokens a decoder generates


@dataclass(frozen=True)
class Op:
    code: int
    rows: int            # dim
    cols: int            # dim
    slots: tuple[Slot, ...]
    params: tuple[int, ...] = ()

    def __post_init__(self):
        if len(self.slots) > MAX_SLOTS or len(self.params) > MAX_PARAMS:
            raise CommitmentError(f"op {NAMES.get(self.code, self.code)} has too many slots or params")

    def words(self) -> list[int]:
        out = [self.code, self.rows, self.cols]
        for i in range(MAX_SLOTS):
            s = self.slots[i] if i < len(self.slots) else Slot(0, 0, 0, 0)
            out += [s.ref, s.rows, s.cols, s.width]
        return out + list(self.params) + [0] * (MAX_PARAMS - len(self.params))

    def encode(self) -> bytes:
        return encode([f"int256[{DESC_WORDS}]"], [self.words()])

    @classmethod
    def decode(cls, data: bytes) -> "Op":
        """The op a descriptor encodes (inverse of encode: the same bytes again)."""
        (words,) = decode([f"int256[{DESC_WORDS}]"], data)
        slots = []
        for i in range(MAX_SLOTS):
            r, rows, cols, width = words[3 + 4 * i: 7 + 4 * i]
            if r:
                slots.append(Slot(r, rows, cols, width))
        return cls(words[0], words[1], words[2], tuple(slots), tuple(words[3 + 4 * MAX_SLOTS:]))

    def shape(self, ctx: JobCtx) -> tuple[int, int]:
        return dim_value(self.rows, ctx), dim_value(self.cols, ctx)

    def slot_shape(self, i: int, ctx: JobCtx) -> tuple[int, int]:
        s = self.slots[i]
        return dim_value(s.rows, ctx), dim_value(s.cols, ctx)

    @property
    def name(self) -> str:
        return NAMES[self.code]

    def run(self, ins: list[np.ndarray], ctx: JobCtx) -> np.ndarray:
        for i, x in enumerate(ins):
            if x is not None and x.shape != self.slot_shape(i, ctx):
                raise CommitmentError(f"{self.name}: slot {i} has shape {x.shape}, expected {self.slot_shape(i, ctx)}")
        out = np.asarray(RUN[self.code](self, ins, ctx), dtype=np.int64)
        if out.shape != self.shape(ctx):
            raise CommitmentError(f"{self.name}: output shape {out.shape}, expected {self.shape(ctx)}")
        return out

    def reads(self, r: int, c: int, ins: list[np.ndarray], ctx: JobCtx) -> list[int | None]:
        """The row of each slot that element (r, c) reads (None: not read)."""
        return READS[self.code](self, r, c, ins, ctx)


def _bound(x: np.ndarray) -> int:
    return int(np.abs(x).max()) + 1 if x.size else 1


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return quant.exact_matmul(a, b, _bound(a), _bound(b))


# ---------------------------------------------------------------- vectorised rules

def _dot(op, ins, ctx):
    mult, shift, lo, hi = op.params[:4]
    return quant.requant(_matmul(ins[0], ins[1].T), mult, shift, lo, hi)


def _token_ids(t0: np.ndarray, ctx: JobCtx) -> np.ndarray:
    return t0[0, ctx.tokens_at:ctx.tokens_at + ctx.tokens]


def _embed_sum(op, ins, ctx):
    t0, word, pos, typ = ins
    return word[_token_ids(t0, ctx)] + pos[: ctx.tokens] + typ[0]


def _layer_norm(op, ins, ctx):
    x, p = ins
    (eps,) = op.params[:1]
    n = x.shape[1]
    mean = quant.round_div(x.sum(-1, keepdims=True), n)
    d = x - mean
    var = quant.round_div((d * d).sum(-1, keepdims=True), n) + eps
    std = np.maximum(quant.isqrt(var), 1)
    return np.clip(quant.round_div(d * p[:, 0], std << LN_BITS) + p[:, 1], -128, 127)


def _dense(op, ins, ctx):
    x, w, p = ins
    shift, lo, hi = op.params[:3]
    return quant.requant(_matmul(x, w.T) + p[:, 0], p[:, 1], shift, lo, hi)


def _scores(op, ins, ctx):
    q, k = ins
    d, g = op.params[:2]
    rq = q.shape[0]
    h = dim_value(op.rows, ctx) // rq                                 # q may hold more columns (the decoder's k)
    qh = q[:, :h * d].reshape(rq, h, d).transpose(1, 0, 2)            # [h, rq, d]
    kh = k.reshape(k.shape[0], -1, d)[:, np.arange(h) // g].transpose(1, 2, 0)  # [h, d, S]
    return _matmul(qh, kh).reshape(h * rq, k.shape[0])


def _softmax(op, ins, ctx):
    mult, shift, one = op.params[:3]
    return quant.softmax_rows(ins[0], mult, shift, one)


def _transpose(op, ins, ctx):
    return ins[0].T.copy()


def _context(op, ins, ctx):
    p, vt = ins
    d, g, mult, shift, lo, hi = op.params[:6]
    rows = dim_value(op.rows, ctx)
    h = p.shape[0] // rows
    ph = p.reshape(h, rows, p.shape[1])                               # [h, rows, S]
    vh = vt.reshape(-1, d, vt.shape[1])[np.arange(h) // g].transpose(0, 2, 1)   # [h, S, d]
    out = _matmul(ph, vh).transpose(1, 0, 2).reshape(rows, h * d)
    return quant.requant(out, mult, shift, lo, hi)


def _residual(op, ins, ctx):
    a, x, p = ins
    shift, lo, hi = op.params[:3]
    return a + quant.requant(x, p[:, 0], shift, lo, hi)


def _lookup(op, ins, ctx):
    x, table = ins
    (offset,) = op.params[:1]
    flat = table.reshape(-1)
    idx = x + offset
    if idx.min() < 0 or idx.max() >= flat.size:
        raise CommitmentError("lookup index out of the table")
    return flat[idx]


def _pool(op, ins, ctx):
    xt, p = ins
    return (xt.sum(1) * p[:, 0]).reshape(1, -1)


def _l2norm(op, ins, ctx):
    (bits,) = op.params[:1]
    return np.stack([quant.l2_normalise(row, bits) for row in ins[0]])


RUN = {DOT: _dot, EMBED_SUM: _embed_sum, LAYER_NORM: _layer_norm, DENSE: _dense, SCORES: _scores,
       SOFTMAX: _softmax, TRANSPOSE: _transpose, CONTEXT: _context, RESIDUAL: _residual, LOOKUP: _lookup,
       POOL: _pool, L2NORM: _l2norm}


# ---------------------------------------------------------------- rows an element reads

def _reads_embed(op, r, c, ins, ctx):
    return [0, int(ins[0][0, ctx.tokens_at + r]), r, 0]


def _reads_row_and_channel(op, r, c, ins, ctx):
    """Row r of the input, row c of the weight (or per-channel params)."""
    return [r, c]


def _reads_dense(op, r, c, ins, ctx):
    return [r, c, c]


def _reads_scores(op, r, c, ins, ctx):
    rq = dim_value(op.slots[0].rows, ctx)
    return [r % rq, c]


def _reads_row(op, r, c, ins, ctx):
    return [r]


def _reads_transpose(op, r, c, ins, ctx):
    return [c]


def _reads_context(op, r, c, ins, ctx):
    d, g = op.params[:2]
    rows = dim_value(op.rows, ctx)
    h = c // d
    return [h * rows + r, (h // g) * d + c % d]


def _reads_residual(op, r, c, ins, ctx):
    return [r, r, c]


def _reads_lookup(op, r, c, ins, ctx):
    return [r, (int(ins[0][r, c]) + op.params[0]) // TABLE_WIDTH]


def _reads_pool(op, r, c, ins, ctx):
    return [c, c]


READS = {DOT: _reads_row_and_channel, EMBED_SUM: _reads_embed, LAYER_NORM: _reads_row_and_channel, DENSE: _reads_dense,
         SCORES: _reads_scores, SOFTMAX: _reads_row, TRANSPOSE: _reads_transpose, CONTEXT: _reads_context,
         RESIDUAL: _reads_residual, LOOKUP: _reads_lookup, POOL: _reads_pool, L2NORM: _reads_row}


def width_for(values: np.ndarray) -> int:
    """The narrowest packed width (bytes) that holds a weight tensor."""
    top = max(int(values.max()), -int(values.min()) - 1, 0) if values.size else 0
    for w in (1, 2, 4, 8):
        if top < 1 << (8 * w - 1):
            return w
    raise CommitmentError("weight values beyond int64")


from opinfer.semantics import decoder_ops  # noqa: E402,F401  (registers opcodes 13..27 in RUN and READS)
from opinfer.semantics import attention_ops  # noqa: E402,F401  (registers EXP_SUMS and PROBS)
