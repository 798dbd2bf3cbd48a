"""SmolLM2-135M-Instruct as an integer program, with a KV cache.

Recipe (docs/quantisation.md): W_BITS-bit weights per output row, int16
activations with per-channel scales after every RMSNorm (folded into the next
weights), brought to LINEAR_IN_BITS magnitude bits per row inside every
Linear, an int32 residual stream at one fixed scale, integer RMSNorm with an
exact integer square root, RoPE from integer cos/sin tables, 12-bit q/k/v,
integer-exp softmax with int16 probabilities, a SiLU table, and an exact
int32 logits row; greedy decoding takes its argmax (ties to the lowest id),
sampling goes through opinfer.engine.sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from opinfer.engine.calibrate import absmax, channel_absmax, quantize_rows_bits
from opinfer.engine.gguf_loader import SmolLM2Weights, load_weights
from opinfer.engine.quant import (INT16, INT32, channel_multipliers, exact_matmul, exact_matmul_blocked, isqrt,
                                  multiplier_shift, quantize_symmetric, requant, round_div, softmax_rows)
from opinfer.engine.smollm2_reference import apply_rope, rms_norm, rope_tables, silu, softmax

RESIDUAL_BITS = 24      # calibrated |residual| maps to 2^24 (int32 leaves 2^7 headroom)
SQUARE_BITS = 26        # RMSNorm squares values of at most 26 bits, so 576 of them fit int64
NORM_BITS = 8           # fractional bits of RMSNorm gains
ROPE_BITS = 14          # cos/sin tables scaled by 2^14
HEADROOM = 1.25
SILU_HALF = 2048
PROB_ONE = 32767
MASKED = -(1 << 40)     # score of a masked (future) position: exp underflows to 0
LOGIT_BITS = 16         # logits share one scale, 2^-16
WIDE = 1 << 15          # int16 activations, brought to LINEAR_IN_BITS per row inside Linear
LINEAR_IN_BITS = 9      # Linear inputs: each row shifted right until |x| <= 2^9 (10-bit signed values)
W_BITS = 10             # Linear weights: signed 10-bit per output row, |w| <= 511
QKV_MAX = 2047          # q, k, v: 12-bit signed
UP_MAX = 32767

CHAT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
CALIBRATION = [
    "Write a short poem about the sea and the stars at night.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The French Revolution began in 1789 and changed European politics for a century. Historians still "
    "debate its causes: debt, bad harvests, new ideas about rights, and a monarchy unable to reform.",
    "Q: What is 17 times 23? A: 17 times 23 is 391. Q: And 391 divided by 17? A: 23.",
    "Dear team, the quarterly review has moved to Thursday at 3 pm. Please bring your updated figures.",
    # Chat turns (the default system prompt, special tokens): their activations
    # differ from plain text's, and the served model sees them first.
    CHAT_SYSTEM + "<|im_start|>user\nHow many legs does a spider have?<|im_end|>\n"
    "<|im_start|>assistant\nA spider has eight legs.<|im_end|>\n",
    CHAT_SYSTEM + "<|im_start|>user\nWrite a haiku about autumn rain.<|im_end|>\n<|im_start|>assistant\n"
    "Soft rain on red leaves,\nthe garden exhales slowly,\nsummer's last whisper.<|im_end|>\n",
]


@dataclass
class Linear:
    """Integer weights per output row (float32 copy for exact BLAS),
    per-channel requantisation.

    Rule for one row x: d = max(bit_length(max |x|) - in_bits, 0),
    xs = (x + 2^(d-1)) >> d (round half up; xs = x when d = 0), so
    |xs| <= 2^in_bits; acc = (xs . w) << d;
    y = clamp((acc * mult[c] + 2^(shift-1)) >> shift, lo, hi)
    (elements.dense_wide). The model uses in_bits = LINEAR_IN_BITS for every
    Linear."""

    wt: np.ndarray      # [in, out] float32 holding integers
    mult: np.ndarray
    shift: int
    lo: int
    hi: int
    in_max: int = WIDE  # bound on |input| (shapes d's range, not the rule)
    in_bits: int = 7    # magnitude bits of the shifted input (8-bit signed: the original rule)
    w_max: int | None = None  # bound on |weight| (computed when None)

    def __post_init__(self):
        if self.w_max is None:
            self.w_max = int(np.abs(self.wt).max()) if self.wt.size else 0
        self.row_max = _row_max(self.wt)

    def shift_in(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The row shift: (xs, d), d per row ([T, 1])."""
        x = np.asarray(x, dtype=np.int64)
        d = np.maximum(bit_length(np.abs(x).max(-1, keepdims=True)) - self.in_bits, 0)
        half = np.where(d > 0, np.int64(1) << np.maximum(d - 1, 0), 0)
        return (x + half) >> d, d

    def dot(self, xs: np.ndarray) -> np.ndarray:
        """xs . w, exact (|xs| <= 2^in_bits)."""
        return exact_matmul_blocked(xs, self.wt, 1 << self.in_bits, self.w_max, self.row_max)

    def acc(self, x: np.ndarray) -> np.ndarray:
        xs, d = self.shift_in(x)
        return self.dot(xs) << d

    def finish(self, dot: np.ndarray, d: np.ndarray) -> np.ndarray:
        """requant(dot << d): computed as (dot * mult + 2^(e-1)) >> e with
        e = shift - d, which is the same number and keeps int64 far from
        overflow; when e <= 0 the rounding term vanishes (an exact left shift)."""
        p = np.asarray(dot, dtype=np.int64) * np.asarray(self.mult, dtype=np.int64)
        e = self.shift - d
        if np.all(e >= 1):
            return np.clip((p + (np.int64(1) << (e - 1))) >> e, self.lo, self.hi)
        left = np.clip(p, self.lo, self.hi) << np.maximum(-e, 0)    # clamping first keeps the clamp's result
        right = (p + (np.int64(1) << np.maximum(e - 1, 0))) >> np.maximum(e, 0)
        return np.clip(np.where(e >= 1, right, left), self.lo, self.hi)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.int64)
        if x.ndim == 2 and x.shape[0] == 1:          # decoding: the same rule with Python ints
            xs, d = _shift_row(x, self.in_bits)
            e = self.shift - d
            if e >= 1:
                y = (self.dot(xs) * self.mult + (1 << (e - 1))) >> e
                return np.minimum(np.maximum(y, self.lo), self.hi)
        xs, d = self.shift_in(x)
        return self.finish(self.dot(xs), d)


def _linear(w: np.ndarray, s_in, s_out, lo: int, hi: int, in_max: int = WIDE) -> Linear:
    wq, s_w = quantize_rows_bits(w, s_in, W_BITS)
    mult, shift = channel_multipliers(s_w / s_out)
    return Linear(wq.T.astype(np.float32).copy(), mult, shift, lo, hi, in_max, LINEAR_IN_BITS,
                  (1 << (W_BITS - 1)) - 1)


@dataclass
class Fused:
    """Linears that read the same input (q, k, v; gate, up), run as one:
    the same row shift (they share in_bits), one matmul over their weights
    side by side, each column requantised with its own Linear's multiplier,
    shift and clamp. Exactly the bits of calling the Linears one by one;
    after fusing, each Linear's wt is a view of `wt` (no second copy)."""

    linears: list[Linear]
    wt: np.ndarray = None
    mult: np.ndarray = None     # per column, from the Linears
    shift: np.ndarray = None
    lo: np.ndarray = None
    hi: np.ndarray = None

    def __post_init__(self):
        lins = self.linears
        if len({lin.in_bits for lin in lins}) != 1:
            raise ValueError("fused Linears must share in_bits")
        self.wt = np.ascontiguousarray(np.concatenate([lin.wt for lin in lins], axis=1))
        start = 0
        for lin in lins:
            n = lin.wt.shape[1]
            lin.wt = self.wt[:, start:start + n]
            start += n
        col = lambda f: np.concatenate([np.broadcast_to(np.asarray(f(lin), dtype=np.int64),  # noqa: E731
                                                        (lin.wt.shape[1],)) for lin in lins])
        self.mult, self.shift = col(lambda lin: lin.mult), col(lambda lin: lin.shift)
        self.lo, self.hi = col(lambda lin: lin.lo), col(lambda lin: lin.hi)
        self.in_bits = lins[0].in_bits
        self.w_max = max(lin.w_max for lin in lins)
        self.row_max = _row_max(self.wt)
        self.bounds = np.cumsum([lin.wt.shape[1] for lin in lins])[:-1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The Linears' outputs side by side, [T, sum of outs]."""
        x = np.asarray(x, dtype=np.int64)
        if x.ndim == 2 and x.shape[0] == 1:
            xs, d = _shift_row(x, self.in_bits)
            dot = exact_matmul_blocked(xs, self.wt, 1 << self.in_bits, self.w_max, self.row_max)
            e = self.shift - d
            if e.min() >= 1:
                y = (dot * self.mult + (np.int64(1) << (e - 1))) >> e
                return np.minimum(np.maximum(y, self.lo), self.hi)
        return np.concatenate([lin(x) for lin in self.linears], axis=1)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        return np.split(self(x), self.bounds, axis=1)


def _row_max(wt: np.ndarray) -> np.ndarray:
    """max |w| over each input row k of wt [in, out] (int64): bounds the
    partial sums of a decoding row's product (quant.exact_matmul_blocked)."""
    return np.abs(wt).max(1).astype(np.int64) if wt.size else np.zeros(wt.shape[0], dtype=np.int64)


def _shift_row(x: np.ndarray, in_bits: int) -> tuple[np.ndarray, int]:
    """Linear's row shift for a single row (decoding), with Python ints."""
    d = max(int(np.abs(x).max()).bit_length() - in_bits, 0)
    return ((x + (1 << (d - 1))) >> d, d) if d else (x, 0)


def bit_length(x: np.ndarray) -> np.ndarray:
    """Exact bit lengths of non-negative integers below 2^53."""
    return np.where(x > 0, np.frexp(x.astype(np.float64))[1], 0)


@dataclass
class RMSNorm:
    """Per row: d = max(bit_length(max |x|) - SQUARE_BITS, 0), xs = x >> d,
    rms = max(isqrt(round_div(sum xs^2, n) + (eps >> 2d)), 1),
    y = clamp(round_div(x[c] * G[c], rms * 2^(NORM_BITS + d))) to int16."""

    gain: np.ndarray
    eps: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 2 and x.shape[0] == 1:          # decoding: the same rule with Python ints
            d = max(int(np.abs(x).max()).bit_length() - SQUARE_BITS, 0)
            xs = x >> d
            ms = (2 * int(np.dot(xs[0], xs[0])) + x.shape[-1]) // (2 * x.shape[-1]) + (self.eps >> (2 * d))
            den = max(math.isqrt(ms), 1) << (NORM_BITS + d)
            y = (2 * (x * self.gain) + den) // (2 * den)
            return np.minimum(np.maximum(y, INT16[0]), INT16[1])
        d = np.maximum(bit_length(np.abs(x).max(-1, keepdims=True)) - SQUARE_BITS, 0)
        xs = x >> d
        ms = round_div((xs * xs).sum(-1, keepdims=True), x.shape[-1]) + (self.eps >> (2 * d))
        rms = np.maximum(isqrt(ms), 1)
        return np.clip(round_div(x * self.gain, rms << (NORM_BITS + d)), *INT16)


def _rms_norm(gamma, s_res: float, s_out: np.ndarray, eps: float) -> RMSNorm:
    gain = np.floor(gamma / s_out * (1 << NORM_BITS) + 0.5).astype(np.int64)
    return RMSNorm(gain, int(np.floor(eps / s_res ** 2 + 0.5)))


@dataclass
class Block:
    attn_norm: RMSNorm
    q: Linear
    k: Linear
    v: Linear
    score_mult: int
    score_shift: int
    ctx_mult: int
    ctx_shift: int
    o: Linear           # to the residual scale
    ffn_norm: RMSNorm
    gate: Linear        # to the SiLU table index
    up: Linear          # to int8
    silu: np.ndarray    # int16 table over [-SILU_HALF, SILU_HALF)
    down: Linear        # to the residual scale
    qkv: Fused | None = None        # q, k, v run as one (their wt are views of qkv.wt)
    gate_up: Fused | None = None    # gate, up run as one

    def fuse(self) -> "Block":
        self.qkv = Fused([self.q, self.k, self.v])
        self.gate_up = Fused([self.gate, self.up])
        return self


def calibration_forward(w: SmolLM2Weights, ids: np.ndarray, rec: dict) -> None:
    """A float forward over one sequence (no cache) that records activations."""
    T = len(ids)
    cos, sin = rope_tables(T, w.head_dim, w.rope_theta)
    D, nh, nkv = w.head_dim, w.n_heads, w.n_kv_heads
    x = w.tok_embd[ids].astype(np.float32)
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    residuals = [x]
    for i, L in enumerate(w.layers):
        h = rms_norm(x, L.attn_norm, w.rms_eps)
        rec[f"{i}.attn_in"] = h
        q = apply_rope((h @ L.wq.T).reshape(T, nh, D), cos, sin)
        k = apply_rope((h @ L.wk.T).reshape(T, nkv, D), cos, sin)
        v = (h @ L.wv.T).reshape(T, nkv, D)
        rec[f"{i}.q"], rec[f"{i}.k"], rec[f"{i}.v"] = q, k, v
        kk = np.repeat(k, nh // nkv, axis=1)
        vv = np.repeat(v, nh // nkv, axis=1)
        scores = np.einsum("thd,shd->hts", q, kk) / np.float32(np.sqrt(D))
        scores = np.where(mask[None], -np.inf, scores)
        ctx = np.einsum("hts,shd->thd", softmax(scores), vv).reshape(T, nh * D)
        rec[f"{i}.ctx"] = ctx
        x = x + ctx @ L.wo.T
        residuals.append(x)
        h = rms_norm(x, L.ffn_norm, w.rms_eps)
        rec[f"{i}.ffn_in"] = h
        g, u = h @ L.w_gate.T, h @ L.w_up.T
        rec[f"{i}.gate"], rec[f"{i}.up"] = g, u
        rec[f"{i}.silu"] = silu(g)
        m = silu(g) * u
        rec[f"{i}.m"] = m
        x = x + m @ L.w_down.T
        residuals.append(x)
    rec["residual"] = np.concatenate(residuals)
    rec["final_in"] = rms_norm(x, w.output_norm, w.rms_eps)


@dataclass
class IntSmolLM2:
    embed: np.ndarray           # int32 token embeddings at the residual scale
    blocks: list[Block]
    final_norm: RMSNorm
    lm_head: Linear             # int8 rows, requantised to one logit scale (2^-LOGIT_BITS)
    cos: np.ndarray             # int, [ctx, D/2], scaled by 2^ROPE_BITS
    sin: np.ndarray
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @classmethod
    def build(cls, weights: SmolLM2Weights | None = None, max_ctx: int = 2048) -> "IntSmolLM2":
        from opinfer.engine.bpe_tokenizer import load_tokenizer

        w = weights or load_weights()
        tok = load_tokenizer()
        records = []
        for text in CALIBRATION:
            rec: dict = {}
            calibration_forward(w, np.asarray(tok.encode(text), dtype=np.int64), rec)
            records.append(rec)
        s_res = absmax(records, "residual") / (1 << RESIDUAL_BITS)
        embed = quantize_symmetric(w.tok_embd, s_res, *INT32)
        D = w.head_dim
        blocks = []
        for i, L in enumerate(w.layers):
            s_a = channel_absmax(records, f"{i}.attn_in", HEADROOM) / INT16[1]
            s_q = HEADROOM * absmax(records, f"{i}.q") / QKV_MAX
            s_k = HEADROOM * absmax(records, f"{i}.k") / QKV_MAX
            s_v = HEADROOM * absmax(records, f"{i}.v") / QKV_MAX
            s_ctx = HEADROOM * absmax(records, f"{i}.ctx") / INT16[1]
            score_mult, score_shift = multiplier_shift(s_q * s_k / np.sqrt(D) * 256, bits=20)
            ctx_mult, ctx_shift = multiplier_shift(s_v / PROB_ONE / s_ctx, bits=20)
            s_f = channel_absmax(records, f"{i}.ffn_in", HEADROOM) / INT16[1]
            s_g = HEADROOM * absmax(records, f"{i}.gate") / (SILU_HALF - 1)
            s_u = HEADROOM * absmax(records, f"{i}.up") / UP_MAX
            s_s = HEADROOM * absmax(records, f"{i}.silu") / INT16[1]
            grid = np.arange(-SILU_HALF, SILU_HALF, dtype=np.float64) * s_g
            blocks.append(Block(
                attn_norm=_rms_norm(L.attn_norm, s_res, s_a, w.rms_eps),
                q=_linear(L.wq, s_a, s_q, -QKV_MAX, QKV_MAX, in_max=WIDE),
                k=_linear(L.wk, s_a, s_k, -QKV_MAX, QKV_MAX, in_max=WIDE),
                v=_linear(L.wv, s_a, s_v, -QKV_MAX, QKV_MAX, in_max=WIDE),
                score_mult=score_mult, score_shift=score_shift, ctx_mult=ctx_mult, ctx_shift=ctx_shift,
                o=_linear(L.wo, s_ctx, s_res, *INT32, in_max=WIDE),
                ffn_norm=_rms_norm(L.ffn_norm, s_res, s_f, w.rms_eps),
                gate=_linear(L.w_gate, s_f, s_g, -SILU_HALF, SILU_HALF - 1, in_max=WIDE),
                up=_linear(L.w_up, s_f, s_u, -UP_MAX, UP_MAX, in_max=WIDE),
                silu=quantize_symmetric(grid / (1 + np.exp(-grid)), s_s, *INT16),
                down=_linear(L.w_down, s_s * s_u, s_res, *INT32, in_max=1 << 30),
            ).fuse())
        s_o = channel_absmax(records, "final_in", HEADROOM) / INT16[1]
        head = _linear(w.output, s_o, 2.0 ** -LOGIT_BITS, *INT32, in_max=WIDE)
        cos, sin = rope_tables(max_ctx, D, w.rope_theta)
        to_int = lambda t: np.floor(t.astype(np.float64) * (1 << ROPE_BITS) + 0.5).astype(np.int64)  # noqa: E731
        return cls(embed, blocks, _rms_norm(w.output_norm, s_res, s_o, w.rms_eps), head, to_int(cos),
                   to_int(sin), w.n_heads, w.n_kv_heads, D)

    def session(self, max_ctx: int = 2048) -> "Session":
        return Session(self, max_ctx)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Adjacent pairs rotated by integer tables: round((a c - b s) / 2^14)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    half = 1 << (ROPE_BITS - 1)
    out = np.empty_like(x)
    out[..., 0::2] = (x0 * c - x1 * s + half) >> ROPE_BITS
    out[..., 1::2] = (x0 * s + x1 * c + half) >> ROPE_BITS
    return out


class Session:
    """One sequence with an integer KV cache."""

    def __init__(self, model: IntSmolLM2, max_ctx: int):
        self.m = model
        nl, nkv, D = len(model.blocks), model.n_kv_heads, model.head_dim
        # Integers held exactly in float64 (|k| < 2^13, |v| <= QKV_MAX), so
        # the attention products below need no conversion.
        self.k = np.zeros((nl, nkv, max_ctx, D), dtype=np.float64)
        self.v = np.zeros((nl, nkv, max_ctx, D), dtype=np.float64)
        self.pos = 0
        self.max_ctx = max_ctx

    def _attention(self, i: int, b: Block, h: np.ndarray) -> np.ndarray:
        return self._attend(i, b, b.qkv(h))

    def _attend(self, i: int, b: Block, qkv: np.ndarray) -> np.ndarray:
        """Attention of this session's new rows given their fused q|k|v [T, (nh + 2 nkv) D]."""
        m = self.m
        T, D, nh, nkv = qkv.shape[0], m.head_dim, m.n_heads, m.n_kv_heads
        start, end = self.pos, self.pos + T
        cos, sin = m.cos[start:end], m.sin[start:end]
        qk = rope(qkv[:, :(nh + nkv) * D].reshape(T, nh + nkv, D), cos, sin)   # q and k heads at once
        q = qk[:, :nh]
        self.k[i, :, start:end] = qk[:, nh:].transpose(1, 0, 2)
        self.v[i, :, start:end] = qkv[:, (nh + nkv) * D:].reshape(T, nkv, D).transpose(1, 0, 2)
        group = nh // nkv
        qg = q.transpose(1, 0, 2).reshape(nkv, group * T, D)
        scores = exact_matmul(qg, self.k[i, :, :end].transpose(0, 2, 1), 2 * QKV_MAX, 2 * QKV_MAX)
        if T > 1:                                   # one new position sees every cached one
            future = np.arange(end)[None, :] > (start + np.arange(T))[:, None]      # [T, S]
            scores = np.where(np.tile(future, (group, 1))[None], MASKED, scores)
        probs = softmax_rows(scores, b.score_mult, b.score_shift, PROB_ONE)
        ctx = exact_matmul(probs, self.v[i, :, :end], PROB_ONE, QKV_MAX + 1)         # [nkv, group*T, D]
        ctx = ctx.reshape(nh, T, D).transpose(1, 0, 2).reshape(T, nh * D)
        return requant(ctx, b.ctx_mult, b.ctx_shift, *INT16)

    def forward(self, ids, all_logits: bool = False) -> np.ndarray:
        """Append tokens; int64 logits of the last (or every) new position."""
        m = self.m
        ids = np.asarray(list(ids), dtype=np.int64)
        if self.pos + len(ids) > self.max_ctx:
            raise ValueError(f"context overflow: {self.pos} + {len(ids)} > {self.max_ctx}")
        x = m.embed[ids]
        for i, b in enumerate(m.blocks):
            x = x + b.o(self._attention(i, b, b.attn_norm(x)))
            gate, up = b.gate_up.split(b.ffn_norm(x))
            x = x + b.down(b.silu[gate + SILU_HALF] * up)
        self.pos += len(ids)
        if not all_logits:
            x = x[-1:]
        logits = m.lm_head(m.final_norm(x))
        return logits if all_logits else logits[0]

    def generate(self, ids, max_tokens: int, stop_ids=(), sampler=None,
                 stop_sequences=()) -> "Generation":
        """Append the prompt `ids`, then generate at most `max_tokens` tokens.

        Each token is the argmax of the int64 logits (ties to the lowest id)
        when `sampler` is None or has temperature 0, otherwise
        opinfer.engine.sampling.next_token(logits, sampler, step) with step
        the index of the generated token (0 for the first). Generation stops
        after a token of `stop_ids` (kept in the output) or as soon as the
        generated ids end with one of `stop_sequences` (token-id sequences,
        kept too): finish reason "stop"; otherwise after `max_tokens`
        tokens: "length". Returns Generation(ids, finish_reason), a named
        tuple: `ids, reason = session.generate(...)`."""
        stop = {int(t) for t in stop_ids}
        sequences = [tuple(int(t) for t in seq) for seq in stop_sequences if len(seq)]
        greedy = sampler is None or getattr(sampler, "temperature_milli", 0) == 0
        if not greedy:
            from opinfer.engine.sampling import next_token
        out: list[int] = []
        if max_tokens <= 0:
            return Generation(out, "length")
        logits = self.forward(ids)
        while True:
            token = int(np.argmax(logits)) if greedy else int(next_token(logits, sampler, len(out)))
            out.append(token)
            if token in stop or any(len(out) >= len(q) and tuple(out[-len(q):]) == q for q in sequences):
                return Generation(out, "stop")
            if len(out) >= max_tokens:
                return Generation(out, "length")
            logits = self.forward([token])


def forward_many(sessions: list["Session"], batch: list) -> list[np.ndarray]:
    """Session.forward of several sessions in one pass (each appends its own
    ids; int64 logits of each one's last new position). The row-wise ops
    (RMSNorm, every Linear, SwiGLU, residuals, the LM head) run over all
    sessions' rows stacked; attention runs per session on its own cache. Each
    op is exact and row-local, so every session gets the bits it would get
    alone, whatever else is in the batch (tests/unit/test_batch_determinism.py)."""
    if not sessions:
        return []
    m = sessions[0].m
    seqs = [np.asarray(list(ids), dtype=np.int64) for ids in batch]
    for s, ids in zip(sessions, seqs):
        if s.m is not m or s.pos + len(ids) > s.max_ctx or not len(ids):
            raise ValueError("forward_many: sessions of one model, non-empty ids within each context")
    bounds = np.cumsum([0] + [len(ids) for ids in seqs])
    spans = list(zip(bounds[:-1], bounds[1:]))
    x = m.embed[np.concatenate(seqs)]
    for i, b in enumerate(m.blocks):
        qkv = b.qkv(b.attn_norm(x))
        x = x + b.o(np.concatenate([s._attend(i, b, qkv[a:e]) for s, (a, e) in zip(sessions, spans)]))
        gate, up = b.gate_up.split(b.ffn_norm(x))
        x = x + b.down(b.silu[gate + SILU_HALF] * up)
    for s, ids in zip(sessions, seqs):
        s.pos += len(ids)
    last = x[bounds[1:] - 1]
    return list(m.lm_head(m.final_norm(last)))


def generate_many(model: IntSmolLM2, requests: list[dict], max_ctx: int = 2048) -> list["Generation"]:
    """Session.generate for several requests at once (continuous batching of
    their decode steps through forward_many): request = dict(ids, max_tokens,
    stop_ids=(), sampler=None, stop_sequences=()). The same tokens as each
    request alone."""
    from opinfer.engine.sampling import next_token

    sessions = [model.session(max_ctx) for _ in requests]
    outs: list[list[int]] = [[] for _ in requests]
    reasons: list[str | None] = [None if r["max_tokens"] > 0 else "length" for r in requests]
    active = [k for k, r in enumerate(requests) if reasons[k] is None]
    logits = dict(zip(active, forward_many([sessions[k] for k in active], [requests[k]["ids"] for k in active])))
    while active:
        feed = []
        for k in active:
            r, out = requests[k], outs[k]
            sampler = r.get("sampler")
            greedy = sampler is None or sampler.temperature_milli == 0
            token = int(np.argmax(logits[k])) if greedy else int(next_token(logits[k], sampler, len(out)))
            out.append(token)
            stops = [tuple(int(t) for t in q) for q in r.get("stop_sequences", ()) if len(q)]
            if token in {int(t) for t in r.get("stop_ids", ())} or any(
                    len(out) >= len(q) and tuple(out[-len(q):]) == q for q in stops):
                reasons[k] = "stop"
            elif len(out) >= r["max_tokens"]:
                reasons[k] = "length"
            else:
                feed.append(k)
        active = feed
        if active:
            logits = dict(zip(active, forward_many([sessions[k] for k in active], [[outs[k][-1]] for k in active])))
    return [Generation(out, reason) for out, reason in zip(outs, reasons)]


class Generation(NamedTuple):
    """Generated token ids and why generation ended: "stop" (a stop id or a
    stop sequence, included in ids) or "length" (max_tokens reached)."""

    ids: list[int]
    finish_reason: str


@lru_cache(maxsize=1)
def default_model() -> IntSmolLM2:
    return IntSmolLM2.build()
