"""all-MiniLM-L6-v2 as an integer program (see docs/quantisation.md).

Built once from the float weights and calibration sentences; inference uses
integer arithmetic only (int8 weights and activations, int32 accumulators, an
int32 residual stream, integer LayerNorm with an exact integer square root,
table-lookup softmax and GELU, integer mean pooling and L2 norm). The output
embedding is int64 with scale 2^-14.

The fast path is native (opinfer/native: `oi_mlm_forward`, the whole
forward in C over byte products with exact integer sums, threads over output
columns and heads); `forward_reference` / `forward_batch_reference` and the
layers' `__call__` are the same rules in plain numpy, and tests check the two
give the same bits op by op and on whole sequences (tests/unit/test_minilm_native.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.calibrate import absmax, channel_absmax, quantize_rows
from opinfer.semantics.quant import (INT8, INT16, INT32, channel_multipliers, exact_matmul, isqrt, l2_normalise,
                                     multiplier_shift, quantize_symmetric, requant, round_div, softmax_rows)

OUT_BITS = 14           # output embedding scale 2^-14
LN_BITS = 8             # fractional bits of LayerNorm gains
RESIDUAL_MAX = 1 << 14  # calibrated |residual| maps to this
EXP_STEP_BITS = 8       # softmax exp inputs in units of 2^-8 (quant.exp_neg)
PROB_ONE = 32767        # probabilities are int16 / 32767
GELU_HALF = 2048        # GELU table index range [-2048, 2047]
_NATIVE_LOCK = threading.RLock()   # the C structs are built once, whichever request thread comes first
HEADROOM = 1.25         # calibrated |max| of int8 activations maps to 127 / HEADROOM

CALIBRATION = [
    "A man is playing a guitar on the street corner.",
    "The central bank raised interest rates by a quarter point.",
    "How do I reset my password if I forgot my email?",
    "Photosynthesis converts light energy into chemical energy.",
    "She scored the winning goal in the final minute of the match.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Quantum computers use qubits that can be in superposition.",
    "Our flight was delayed for three hours because of fog.",
    "Python lists are mutable, while tuples are immutable.",
    "The museum exhibits paintings from the seventeenth century.",
    "Regular exercise improves both physical and mental health.",
    "The treaty was signed by twelve countries in 1648.",
    "I can't believe how cheap these headphones were!",
    "Volcanic eruptions can affect the global climate for years.",
    "Please send the invoice to the accounting department by Friday.",
    "The cat slept on the warm windowsill all afternoon.",
]


@dataclass
class Dense:
    """int8 weights [out, in] with per-output-channel scales, int32 bias,
    and the requantisation of the accumulator to the output's scale."""

    w: np.ndarray      # int8 values, shape [out, in]; used transposed
    bias: np.ndarray   # int32, scale s_w[c] (input scales are folded into w)
    mult: np.ndarray   # per-channel multiplier
    shift: int
    lo: int
    hi: int
    in_max: int        # bound on |input|, for exact matmuls
    wt: np.ndarray = field(init=False, repr=False)
    _native: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.wt = self.w.T.copy()

    def native(self):
        """The C matrix (oi_i8mat): the weights packed in panels of 16 rows x 4 columns,
        their column sums, bias and multipliers; int8 input, or int16 as two byte planes."""
        with _NATIVE_LOCK:
            if self._native is None:
                self._native = self._build_native()
        return self._native[0]

    def _build_native(self):
        from opinfer import native

        n, k = self.w.shape
        if np.abs(self.w).max(initial=0) > 127:
            raise ValueError("MiniLM weights must be int8")
        np_, kp = -(-n // 16) * 16, -(-k // 4) * 4
        full = np.zeros((np_, kp), dtype=np.int8)
        full[:n, :k] = self.w
        wp = np.ascontiguousarray(full.reshape(np_ // 16, 16, kp // 4, 4).transpose(0, 2, 1, 3))
        colsum = self.w.sum(1).astype(np.int32)
        bias = np.ascontiguousarray(self.bias, dtype=np.int64)
        mult = np.ascontiguousarray(np.broadcast_to(self.mult, (n,)), dtype=np.int64)
        planes = 1 if self.in_max <= 128 else 2
        struct = native.I8Mat(n, k, np_, kp, planes, self.shift, self.lo, self.hi, wp.ctypes.data,
                              colsum.ctypes.data, bias.ctypes.data, mult.ctypes.data)
        return struct, (wp, colsum, bias, mult)

    def native_call(self, x: np.ndarray) -> np.ndarray:
        """__call__ on the native kernels (the same bits)."""
        from opinfer import native

        x = np.ascontiguousarray(x, dtype=np.int64)
        y = np.empty((x.shape[0], self.w.shape[0]), dtype=np.int64)
        if native.lib().oi_i8_dense(native.ctypes.byref(self.native()), x.ctypes.data, x.shape[0], y.ctypes.data):
            raise ValueError("dense input outside its integer range")
        return y

    def acc(self, x: np.ndarray) -> np.ndarray:
        return exact_matmul(x, self.wt, self.in_max, 128) + self.bias

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return requant(self.acc(x), self.mult, self.shift, self.lo, self.hi)


@dataclass
class LayerNorm:
    """y = clamp(round_div((x - mean) * G[c], std * 2^LN_BITS) + B[c]) with
    mean = round_div(sum x, n), var = round_div(sum (x - mean)^2, n) + E,
    std = max(isqrt(var), 1); output int8."""

    gain: np.ndarray
    beta: np.ndarray
    eps: int

    def native(self):
        from opinfer import native

        g = np.ascontiguousarray(self.gain, dtype=np.int64)
        b = np.ascontiguousarray(self.beta, dtype=np.int64)
        return native.Ln(g.ctypes.data, b.ctypes.data, int(self.eps)), (g, b)

    def native_call(self, x: np.ndarray) -> np.ndarray:
        from opinfer import native

        x = np.ascontiguousarray(x, dtype=np.int64)
        y = np.empty_like(x)
        ln, keep = self.native()
        native.lib().oi_mlm_layer_norm(native.ctypes.byref(ln), x.ctypes.data, x.shape[0], x.shape[1], y.ctypes.data)
        return y

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[-1]
        mean = round_div(x.sum(-1, keepdims=True), n)
        d = x - mean
        var = round_div((d * d).sum(-1, keepdims=True), n) + self.eps
        std = np.maximum(isqrt(var), 1)
        return np.clip(round_div(d * self.gain, std << LN_BITS) + self.beta, *INT8)


def _dense(w: np.ndarray, b: np.ndarray, s_in, s_out: float, lo: int, hi: int, in_max: int = 128) -> Dense:
    """`s_in` may be per input channel: it is folded into the weight columns
    before the weights are quantised per output channel."""
    wq, s_w = quantize_rows(w, s_in)
    bias = np.floor(b / s_w + 0.5).astype(np.int64)
    mult, shift = channel_multipliers(s_w / s_out)
    return Dense(wq, bias, mult, shift, lo, hi, in_max)


def _layer_norm(gamma, beta, s_in: float, s_out, eps: float) -> LayerNorm:
    gain = np.floor(gamma / s_out * (1 << LN_BITS) + 0.5).astype(np.int64)
    bq = np.floor(beta / s_out + 0.5).astype(np.int64)
    return LayerNorm(gain, bq, int(np.floor(eps / (s_in * s_in) + 0.5)))


@dataclass
class Layer:
    q: Dense
    k: Dense
    v: Dense
    score_mult: int
    score_shift: int
    ctx_mult: int
    ctx_shift: int
    o: Dense            # to the residual scale
    x_mult: np.ndarray  # previous LN output (per-channel scales) to the residual scale
    x_shift: int
    ln1: LayerNorm
    up: Dense           # to the GELU table index
    gelu: np.ndarray    # int16 table over [-GELU_HALF, GELU_HALF)
    down: Dense         # to the residual scale
    h_mult: np.ndarray
    h_shift: int
    ln2: LayerNorm


@dataclass
class IntMiniLM:
    word: np.ndarray    # int32 embedding tables at the embedding scale
    pos: np.ndarray
    typ: np.ndarray
    ln0: LayerNorm
    layers: list[Layer]
    heads: int
    pool_mult: np.ndarray  # last LayerNorm's per-channel scales relative to the smallest (= 64)
    _native: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, calibration: list[str] = CALIBRATION) -> "IntMiniLM":
        config, w = fw.load()
        records = []
        for text in calibration:
            rec: dict = {}
            fw.reference_forward(fw.encode(text), rec)
            records.append(rec)
        s_emb = absmax(records, "emb_sum") / RESIDUAL_MAX
        word = quantize_symmetric(w["embeddings.word_embeddings.weight"], s_emb, *INT32)
        pos = quantize_symmetric(w["embeddings.position_embeddings.weight"], s_emb, *INT32)
        typ = quantize_symmetric(w["embeddings.token_type_embeddings.weight"][0], s_emb, *INT32)
        s_x = channel_absmax(records, "emb_ln", HEADROOM) / 127
        ln0 = _layer_norm(w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], s_emb, s_x, config.eps)
        D = config.head_dim
        step = 2.0 ** -EXP_STEP_BITS
        layers = []
        for i in range(config.layers):
            p = f"encoder.layer.{i}."
            s_q, s_k, s_v = (absmax(records, f"{i}.{t}") / 127 for t in "qkv")
            q = _dense(w[p + "attention.self.query.weight"], w[p + "attention.self.query.bias"], s_x, s_q, *INT8)
            k = _dense(w[p + "attention.self.key.weight"], w[p + "attention.self.key.bias"], s_x, s_k, *INT8)
            v = _dense(w[p + "attention.self.value.weight"], w[p + "attention.self.value.bias"], s_x, s_v, *INT8)
            # Score units -> exp table index units (step 2^-EXP_STEP_BITS).
            score_mult, score_shift = multiplier_shift(s_q * s_k / np.sqrt(D) / step, bits=20)
            s_ctx = absmax(records, f"{i}.ctx") / 127
            ctx_mult, ctx_shift = multiplier_shift(s_v / PROB_ONE / s_ctx, bits=20)
            s_r1 = absmax(records, f"{i}.attn_res") / RESIDUAL_MAX
            o = _dense(w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"], s_ctx, s_r1,
                       *INT32)
            x_mult, x_shift = channel_multipliers(s_x / s_r1)
            s_h = channel_absmax(records, f"{i}.ln1", HEADROOM) / 127
            ln1 = _layer_norm(w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
                              s_r1, s_h, config.eps)
            s_u = absmax(records, f"{i}.up") / (GELU_HALF - 1)
            up = _dense(w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"], s_h, s_u,
                        -GELU_HALF, GELU_HALF - 1)
            s_g = absmax(records, f"{i}.gelu") / INT16[1]
            grid = np.arange(-GELU_HALF, GELU_HALF) * s_u
            gelu = quantize_symmetric(fw.gelu(grid), s_g, *INT16)
            s_r2 = absmax(records, f"{i}.ffn_res") / RESIDUAL_MAX
            down = _dense(w[p + "output.dense.weight"], w[p + "output.dense.bias"], s_g, s_r2, *INT32,
                          in_max=INT16[1] + 1)
            h_mult, h_shift = channel_multipliers(s_h / s_r2)
            s_x2 = channel_absmax(records, f"{i}.ln2", HEADROOM) / 127
            ln2 = _layer_norm(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], s_r2, s_x2, config.eps)
            layers.append(Layer(q, k, v, score_mult, score_shift, ctx_mult, ctx_shift, o, x_mult, x_shift, ln1,
                                up, gelu, down, h_mult, h_shift, ln2))
            s_x = s_x2
        pool_mult = np.floor(s_x / s_x.min() * 64 + 0.5).astype(np.int64)
        return cls(word, pos, typ, ln0, layers, config.heads, pool_mult)

    # ---------------------------------------------------------------- native inference

    def native(self):
        """The C model (oi_mlm), built once; it points into this model's arrays."""
        with _NATIVE_LOCK:
            if self._native is None:
                self._native = self._build_native()
        return self._native[0]

    def _build_native(self):
        from opinfer import native

        keep = []

        def arr(a):
            a = np.ascontiguousarray(a, dtype=np.int64)
            keep.append(a)
            return a.ctypes.data

        def ln(norm):
            struct, arrays = norm.native()
            keep.append(arrays)
            return struct

        layers = (native.MlmLayer * len(self.layers))()
        for slot, la in zip(layers, self.layers):
            for name in ("q", "k", "v", "o", "up", "down"):
                setattr(slot, name, getattr(la, name).native())
            slot.ln1, slot.ln2 = ln(la.ln1), ln(la.ln2)
            slot.score_mult, slot.score_shift = int(la.score_mult), int(la.score_shift)
            slot.ctx_mult, slot.ctx_shift = int(la.ctx_mult), int(la.ctx_shift)
            slot.x_shift, slot.h_shift, slot.gelu_half = int(la.x_shift), int(la.h_shift), GELU_HALF
            if len(la.gelu) != 2 * GELU_HALF:
                raise ValueError("GELU table of 2 GELU_HALF entries expected")
            slot.x_mult = arr(np.broadcast_to(la.x_mult, (self.word.shape[1],)))
            slot.h_mult = arr(np.broadcast_to(la.h_mult, (self.word.shape[1],)))
            slot.gelu = arr(la.gelu)
        keep.append(layers)
        H = self.word.shape[1]
        m = native.Mlm(len(self.layers), H, self.heads, self.layers[0].up.w.shape[0], self.word.shape[0],
                       self.pos.shape[0], PROB_ONE, arr(self.word), arr(self.pos), arr(np.broadcast_to(self.typ, (H,))),
                       ln(self.ln0), native.ctypes.addressof(layers))
        return m, keep

    def attention_native(self, layer: Layer, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """_attend of one sequence on the native kernels (the same bits)."""
        from opinfer import native

        q, k, v = (np.ascontiguousarray(a, dtype=np.int64) for a in (q, k, v))
        ctx = np.empty_like(q)
        rc = native.lib().oi_mlm_attention(q.ctypes.data, k.ctypes.data, v.ctypes.data, q.shape[0], self.heads,
                                           q.shape[1], PROB_ONE, int(layer.score_mult), int(layer.score_shift),
                                           int(layer.ctx_mult), int(layer.ctx_shift), ctx.ctypes.data)
        if rc:
            raise ValueError("attention input outside int8")
        return ctx

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """The embedding as int64 with scale 2^-OUT_BITS (an L2-unit vector), on the native kernels."""
        return self.forward_batch([ids])[0]

    def forward_batch(self, batch) -> list[np.ndarray]:
        """forward() of several sequences in one native pass: the row-wise ops (dense
        layers, norms, GELU, residuals) run over all sequences' rows stacked,
        attention and pooling per sequence. Every op is exact and row-local
        or per-sequence, so each result is bit for bit forward(ids), whatever
        else is in the batch (tests/unit/test_batch_determinism.py)."""
        from opinfer import native

        seqs = [np.asarray(ids, dtype=np.int64).reshape(-1) for ids in batch]
        if not seqs:
            return []
        ids = np.ascontiguousarray(np.concatenate(seqs + [np.zeros(0, np.int64)]))
        lens = np.array([len(s) for s in seqs], dtype=np.int64)
        out = np.empty((max(len(ids), 1), self.word.shape[1]), dtype=np.int64)
        rc = native.lib().oi_mlm_forward(native.ctypes.byref(self.native()), len(seqs), ids.ctypes.data,
                                         lens.ctypes.data, out.ctypes.data)
        if rc:
            raise ValueError(f"token ids must be in [0, {self.word.shape[0]}) and at most "
                             f"{self.pos.shape[0]} per sequence")
        bounds = np.cumsum(np.concatenate([[0], lens]))
        return [l2_normalise(out[a:b].sum(0) * self.pool_mult, OUT_BITS) for a, b in zip(bounds[:-1], bounds[1:])]

    # ---------------------------------------------------------------- the numpy reference

    def attention(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        return self._attend(layer, layer.q(x), layer.k(x), layer.v(x))

    def _attend(self, layer: Layer, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        T, H = q.shape[0], self.heads
        D = q.shape[1] // H
        qh = q.reshape(T, H, D).transpose(1, 0, 2)
        kh = k.reshape(T, H, D).transpose(1, 2, 0)
        scores = exact_matmul(qh, kh, 128, 128)                       # [H, T, T]
        probs = softmax_rows(scores, layer.score_mult, layer.score_shift, PROB_ONE)  # int16-valued
        vh = v.reshape(T, H, D).transpose(1, 0, 2)
        ctx = exact_matmul(probs, vh, PROB_ONE, 128)                  # [H, T, D]
        ctx = ctx.transpose(1, 0, 2).reshape(T, H * D)
        return requant(ctx, layer.ctx_mult, layer.ctx_shift, *INT8)

    def forward_reference(self, ids: np.ndarray) -> np.ndarray:
        """forward() in plain numpy, op by op (the reference the native kernels equal)."""
        ids = np.asarray(ids, dtype=np.int64)
        T = len(ids)
        x = self.ln0(self.word[ids] + self.pos[:T] + self.typ)
        for layer in self.layers:
            ctx = self.attention(layer, x)
            r = layer.o(ctx) + requant(x, layer.x_mult, layer.x_shift, *INT32)
            h = layer.ln1(r)
            g = layer.gelu[layer.up(h) + GELU_HALF]
            r2 = layer.down(g) + requant(h, layer.h_mult, layer.h_shift, *INT32)
            x = layer.ln2(r2)
        # Mean pooling without the division by T (the L2 norm removes it),
        # channels brought to one scale first.
        return l2_normalise(x.sum(0) * self.pool_mult, OUT_BITS)

    def forward_batch_reference(self, batch) -> list[np.ndarray]:
        """forward_batch() in plain numpy (rows stacked, attention per sequence)."""
        seqs = [np.asarray(ids, dtype=np.int64) for ids in batch]
        if not seqs:
            return []
        bounds = np.cumsum([0] + [len(s) for s in seqs])
        ids = np.concatenate(seqs)
        positions = np.concatenate([np.arange(len(s)) for s in seqs])
        x = self.ln0(self.word[ids] + self.pos[positions] + self.typ)
        for layer in self.layers:
            q, k, v = layer.q(x), layer.k(x), layer.v(x)
            ctx = np.concatenate([self._attend(layer, q[a:b], k[a:b], v[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
            r = layer.o(ctx) + requant(x, layer.x_mult, layer.x_shift, *INT32)
            h = layer.ln1(r)
            g = layer.gelu[layer.up(h) + GELU_HALF]
            r2 = layer.down(g) + requant(h, layer.h_mult, layer.h_shift, *INT32)
            x = layer.ln2(r2)
        return [l2_normalise(x[a:b].sum(0) * self.pool_mult, OUT_BITS) for a, b in zip(bounds[:-1], bounds[1:])]

    def embed(self, text: str) -> np.ndarray:
        return self.forward(fw.encode(text))


def to_float(embedding: np.ndarray) -> np.ndarray:
    """Presentation only: the integer embedding as floats for the API."""
    return np.asarray(embedding, dtype=np.float64) / (1 << OUT_BITS)
