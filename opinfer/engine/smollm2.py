"""SmolLM2-135M-Instruct as an integer program, with a KV cache.

Same recipe as MiniLM (docs/quantisation.md): int8 weights per output
channel, int8 activations with per-channel scales after every RMSNorm and
before the down projection (folded into the next weights), an int32 residual
stream at one fixed scale, integer RMSNorm with an exact integer square root,
RoPE from integer cos/sin tables, integer-exp softmax with int16
probabilities, a SiLU table, and an exact int32 logits row; greedy decoding
takes its argmax (ties to the lowest id).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from opinfer.engine.calibrate import absmax, channel_absmax, quantize_rows
from opinfer.engine.gguf_loader import SmolLM2Weights, load_weights
from opinfer.engine.quant import (INT8, INT16, INT32, channel_multipliers, exact_matmul, isqrt, multiplier_shift,
                                  quantize_symmetric, requant, round_div, softmax_rows)
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
WIDE = 1 << 15          # int16 activations, brought to 8 bits per row inside Linear
QKV_MAX = 127
UP_MAX = 32767

CALIBRATION = [
    "Write a short poem about the sea and the stars at night.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The French Revolution began in 1789 and changed European politics for a century. Historians still "
    "debate its causes: debt, bad harvests, new ideas about rights, and a monarchy unable to reform.",
    "Q: What is 17 times 23? A: 17 times 23 is 391. Q: And 391 divided by 17? A: 23.",
    "Dear team, the quarterly review has moved to Thursday at 3 pm. Please bring your updated figures.",
]


@dataclass
class Linear:
    """int8 weights (float32 copy for exact BLAS), per-channel requantisation."""

    wt: np.ndarray      # [in, out] float32 holding int8 values
    mult: np.ndarray
    shift: int
    lo: int
    hi: int
    in_max: int = 128

    def acc(self, x: np.ndarray) -> np.ndarray:
        if self.in_max <= 128:
            return exact_matmul(x, self.wt, self.in_max, 128)
        # Wider inputs are brought to 8 bits per row: each row is shifted
        # right by d = max(bit_length(max |x|) - 7, 0) (round half up) and the
        # accumulator shifted back left by d.
        d = np.maximum(bit_length(np.abs(x).max(-1, keepdims=True)) - 7, 0)
        half = np.where(d > 0, np.int64(1) << np.maximum(d - 1, 0), 0)
        return exact_matmul((x + half) >> d, self.wt, 128, 128) << d

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return requant(self.acc(x), self.mult, self.shift, self.lo, self.hi)


def _linear(w: np.ndarray, s_in, s_out, lo: int, hi: int, in_max: int = 128) -> Linear:
    wq, s_w = quantize_rows(w, s_in)
    mult, shift = channel_multipliers(s_w / s_out)
    return Linear(wq.T.astype(np.float32).copy(), mult, shift, lo, hi, in_max)


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
                down=_linear(L.w_down, s_s * s_u, s_res, *INT32, in_max=1 << 62),
            ))
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
        self.k = np.zeros((nl, nkv, max_ctx, D), dtype=np.int64)
        self.v = np.zeros((nl, nkv, max_ctx, D), dtype=np.int64)
        self.pos = 0
        self.max_ctx = max_ctx

    def _attention(self, i: int, b: Block, h: np.ndarray) -> np.ndarray:
        m = self.m
        T, D, nh, nkv = h.shape[0], m.head_dim, m.n_heads, m.n_kv_heads
        start, end = self.pos, self.pos + T
        cos, sin = m.cos[start:end], m.sin[start:end]
        q = rope(b.q(h).reshape(T, nh, D), cos, sin)
        k = rope(b.k(h).reshape(T, nkv, D), cos, sin)
        self.k[i, :, start:end] = k.transpose(1, 0, 2)
        self.v[i, :, start:end] = b.v(h).reshape(T, nkv, D).transpose(1, 0, 2)
        group = nh // nkv
        qg = q.transpose(1, 0, 2).reshape(nkv, group * T, D)
        scores = exact_matmul(qg, self.k[i, :, :end].transpose(0, 2, 1), 2 * QKV_MAX, 2 * QKV_MAX)
        future = np.arange(end)[None, :] > (start + np.arange(T))[:, None]          # [T, S]
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
            h = b.ffn_norm(x)
            s = b.silu[b.gate(h) + SILU_HALF]
            x = x + b.down(s * b.up(h))
        self.pos += len(ids)
        if not all_logits:
            x = x[-1:]
        logits = m.lm_head(m.final_norm(x))
        return logits if all_logits else logits[0]

    def generate(self, ids, max_tokens: int, stop_ids=()) -> list[int]:
        """Greedy decoding (argmax, ties to the lowest id)."""
        stop, out = set(stop_ids), []
        logits = self.forward(ids)
        while len(out) < max_tokens:
            token = int(np.argmax(logits))
            out.append(token)
            if token in stop or len(out) >= max_tokens:
                break
            logits = self.forward([token])
        return out


@lru_cache(maxsize=1)
def default_model() -> IntSmolLM2:
    return IntSmolLM2.build()
