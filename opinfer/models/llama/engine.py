"""A llama-family decoder (llama, Mistral's llama files, qwen2) as integers over its GGUF file's own blocks, with a KV cache.

Every size comes from the file's metadata (opinfer/models/llama/gguf.py);
SmolLM2-135M-Instruct (opinfer/models/smollm2) is one file of the family.
Recipe (docs/quantisation.md): the weights are the file's Q4_1 / Q8_0 blocks (its
Q8_0 token embeddings, also the LM head when tied) as exact integers
(opinfer.semantics.blocks); every Linear is elements.block_dense (blockwise int8
activations like llama.cpp's, exact integer sums); every activation has a fixed
binary scale, so nothing is calibrated and the model (and its root) is a
function of the file's bytes:

    residual stream        2^-15  (int32 branches; SmolLM2's largest residual is ~25,000)
    RMSNorm output, ctx    2^-16  (gains are the file's float32 gains times 2^24, rounded)
    q, k, v                2^-9, clamped to +-23,000 (+-45: q, k, v stay below 22 on real text;
                           after RoPE they fit int16, the KV cache's type); with Q/K/V biases
                           (qwen2) the product is clamped to +-(23,000 - B), B the layer's
                           largest |bias| at 2^-9, and the bias added after (a RESIDUAL op)
    gate                   2^-8, an index into a SiLU table over [-64, 64) (32,768 entries at 2^-14)
    up                     2^-14; silu * up at 2^-28 into the down projection
    logits                 2^-16

Scores q.k are at 2^-18; exp's input is (max - score) / sqrt(D) at 2^-8: a shift
when sqrt(D) is a power of two (SmolLM2's D = 64), else a multiplier over 2^16
(`score_scale`). A qwen2 file's Q/K rows are permuted per head at load
(`neox_rows`, llama.cpp's converter permutation) so that one RoPE rule (adjacent
pairs) serves both orders; q.k is unchanged.

RMSNorm, RoPE, the integer-exp softmax with int16 probabilities and the
argmax/sampling rules are unchanged (elements.py). The fast path is the native
forward step (opinfer/native: the whole step in C, threads over output
rows, a batch of sequences at once); `reference_forward` is the same rules in
plain numpy, op by op, and tests check the two give the same bits.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from opinfer.engine.native_dense import NativeDense
from opinfer.semantics import blocks as bk
from opinfer.semantics.quant import INT32, isqrt, requant, round_div, softmax_rows

# Native structs are built once, lazily; two threads building the same one at once
# (two nodes' schedulers sharing one engine in a process: coordinator/local.serve_nodes)
# would each keep their own copy, and the buffers of the one dropped were freed under
# the other's running forward pass (a segfault). Built under this lock.
_NATIVE_BUILD = threading.RLock()

RESIDUAL_BITS = 15      # the residual stream at 2^-15
ACT_BITS = 16           # RMSNorm outputs and the attention context at 2^-16
QKV_BITS = 9            # q, k, v at 2^-9
QKV_MAX = 23000         # |q|, |k|, |v| <= 23,000: after RoPE (|a c - b s| <= 23,000 * 23,171 / 2^14) below 2^15
GATE_BITS = 8           # the gate, an index into the SiLU table, at 2^-8
SILU_HALF = 1 << 14     # the table covers gate indices [-2^14, 2^14): [-64, 64)
SILU_BITS = 14          # SiLU values at 2^-14
UP_BITS = 14            # up at 2^-14
LOGIT_BITS = 16         # logits at 2^-16
SQUARE_BITS = 26        # RMSNorm squares values of at most 26 bits
NORM_BITS = 8           # the RMSNorm rule's fixed gain bits (gains carry NORM_BITS + ACT_BITS)
ROPE_BITS = 14          # cos/sin tables at 2^14
PROB_ONE = 32767        # attention probabilities (int16)
SCORE_SHIFT = 2 * QKV_BITS + 3 - 8    # q.k at 2^-18, / sqrt(64) = 2^-3, into exp's 2^-8 units
CTX_SHIFT = 30
CTX_MULT = round((1 << (CTX_SHIFT + ACT_BITS - QKV_BITS)) / PROB_ONE)   # p.v at 2^-9 / 32767 -> 2^-16
EMBED_SHIFT = bk.FP16_GRID_BITS - RESIDUAL_BITS                          # D q at 2^-24 -> 2^-15
INT16 = (-32768, 32767)
GATE_RANGE = (-SILU_HALF, SILU_HALF - 1)
QKV_RANGE = (-QKV_MAX, QKV_MAX)



def score_scale(head_dim: int) -> tuple[int, int]:
    """(mult, shift) taking q.k at 2^-18 to (q.k / sqrt(D)) in exp's 2^-8 units: (1, 10 + log2 sqrt(D))
    when sqrt(D) is a power of two (D = 64: SCORE_SHIFT), else (round(2^16 / sqrt(D)), 26)."""
    root = math.isqrt(head_dim)
    base = 2 * QKV_BITS - 8
    if root * root == head_dim and root & (root - 1) == 0:
        return 1, base + root.bit_length() - 1
    return int(math.floor((1 << 16) / math.sqrt(head_dim) + 0.5)), base + 16


def neox_rows(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order taking a head's (i, i + D/2) RoPE pairs (qwen2, Hugging Face) to adjacent rows
    (2i, 2i + 1): new row h D + 2i + t is old row h D + t D/2 + i."""
    return np.arange(n_heads * head_dim).reshape(n_heads, 2, head_dim // 2).transpose(0, 2, 1).reshape(-1)


@dataclass
class Dense:
    """A block matrix (the file's blocks, packed for the native kernels) with its output
    format: columns [0, split) requantised with (shift0, lo0, hi0), the rest with
    (shift1, lo1, hi1) (gate | up); one multiplier."""

    packed: np.ndarray = field(repr=False)
    fmt: int
    shift0: int
    lo0: int
    hi0: int
    split: int = 0
    shift1: int = 0
    lo1: int = 0
    hi1: int = 0
    mult: int = bk.MULT_127
    _native: NativeDense | None = field(default=None, repr=False)

    @classmethod
    def of(cls, w: bk.QMatrix, *args, **kw) -> "Dense":
        return cls(bk.pack(w), w.fmt, *args, **kw)

    @property
    def n(self) -> int:
        return self.packed.shape[0]

    @property
    def k(self) -> int:
        return self.packed.shape[1] * bk.BLOCK

    @property
    def w(self) -> bk.QMatrix:
        """The blocks as (codes, D, M) integer arrays (unpacked on every call: the engine
        keeps only the packed blocks)."""
        return bk.unpack(self.packed, self.fmt)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        split = self.split or self.n
        col = lambda a, b: np.where(np.arange(self.n) < split, a, b).astype(np.int64)  # noqa: E731
        return col(self.shift0, self.shift1), col(self.lo0, self.lo1), col(self.hi0, self.hi1)

    def reference(self, x: np.ndarray) -> np.ndarray:
        shift, lo, hi = self.columns()
        return bk.block_dense(x, self.w, self.mult, shift, lo, hi)

    @property
    def native(self) -> NativeDense:
        if self._native is None:
            with _NATIVE_BUILD:
                if self._native is None:
                    self._native = NativeDense(self.packed, self.fmt, self.mult, *self.columns())
        return self._native

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.native(x)


@dataclass
class Layer:
    attn_gain: np.ndarray       # int64 [H]
    qkv: Dense                  # q | k | v [(nh + 2 nkv) D, H]
    o: Dense
    ffn_gain: np.ndarray
    gate_up: Dense              # gate | up [2F, H]
    down: Dense
    qkv_bias: np.ndarray | None = None   # int64 [(nh + 2 nkv) D] at 2^-9 (qwen2), added after the clamp


def _trim_heap() -> None:
    """Give the build's freed temporaries back to the system (glibc keeps freed blocks of
    large numpy arrays in its heap otherwise): the node's resident memory is then the
    packed weights, not the build's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rms_norm(x: np.ndarray, gain: np.ndarray, eps: int, lo: int = INT32[0], hi: int = INT32[1]) -> np.ndarray:
    """elements.rms_norm on every element of the rows of x."""
    x = np.asarray(x, dtype=np.int64)
    d = np.maximum(bk.bit_length(np.abs(x).max(-1, keepdims=True)) - SQUARE_BITS, 0)
    xs = x >> d
    ms = round_div((xs * xs).sum(-1, keepdims=True), x.shape[-1]) + (eps >> (2 * d))
    rms = np.maximum(isqrt(ms), 1)
    return np.clip(round_div(x * gain, rms << (NORM_BITS + d)), lo, hi)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Adjacent pairs of x [T, heads, D] rotated by integer tables [T, D/2]: round((a c - b s) / 2^14)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    half = 1 << (ROPE_BITS - 1)
    out = np.empty_like(x)
    out[..., 0::2] = (x0 * c - x1 * s + half) >> ROPE_BITS
    out[..., 1::2] = (x0 * s + x1 * c + half) >> ROPE_BITS
    return out


def rope_tables(rows: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer cos/sin [rows, D/2] at 2^14 of the angles p theta^(-2i/D) (float64, rounded half up)."""
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(rows, dtype=np.float64)[:, None] * inv[None, :]
    to_int = lambda t: np.floor(t * (1 << ROPE_BITS) + 0.5).astype(np.int64)  # noqa: E731
    return to_int(np.cos(ang)), to_int(np.sin(ang))


def silu_table() -> np.ndarray:
    """silu(g / 2^8) at 2^-14 for g in [-2^14, 2^14), rounded half up."""
    g = np.arange(-SILU_HALF, SILU_HALF, dtype=np.float64) / (1 << GATE_BITS)
    return np.floor(g / (1 + np.exp(-g)) * (1 << SILU_BITS) + 0.5).astype(np.int64)


@dataclass
class IntLlama:
    head: Dense                 # the LM head [V, H] (the Q8_0 token embeddings when tied)
    layers: list[Layer]
    out_gain: np.ndarray
    eps: int                    # at the squared residual scale
    cos: np.ndarray             # [rows, D/2] at 2^14
    sin: np.ndarray
    silu: np.ndarray            # [2 SILU_HALF] at 2^-14
    n_heads: int
    n_kv_heads: int
    head_dim: int
    embed_matrix: Dense | None = None    # the Q8_0 token embeddings when the head is its own (untied)
    score_mult: int = 1
    score_shift: int = SCORE_SHIFT

    def __post_init__(self):
        self._native = None

    @property
    def tied(self) -> bool:
        return self.embed_matrix is None

    @property
    def embedding(self) -> Dense:
        return self.head if self.embed_matrix is None else self.embed_matrix

    @property
    def embed(self) -> bk.QMatrix:
        return self.embedding.w

    def embed_rows(self, ids) -> np.ndarray:
        """requant(D q, 1, EMBED_SHIFT) of the tokens' Q8_0 rows (elements.block_embed)."""
        rows = bk.unpack(self.embedding.packed[np.asarray(ids, dtype=np.int64)], bk.Q8_0)
        x = rows.codes.astype(np.int64).reshape(len(ids), -1, bk.BLOCK) * rows.D[..., None]
        return requant(x, 1, EMBED_SHIFT, *INT32).reshape(len(ids), -1)

    @property
    def hidden(self) -> int:
        return self.head.k

    @property
    def vocab(self) -> int:
        return self.head.n

    @property
    def max_ctx(self) -> int:
        return self.cos.shape[0]

    @classmethod
    def build(cls, path, rope_rows: int | None = None) -> "IntLlama":
        """The model from the GGUF file alone (no calibration: every scale is fixed); every
        size from its metadata (gguf.Config: a file outside the family is refused)."""
        from opinfer.models.llama import gguf as gl

        path = str(path)
        # A light index of the file (no memory map, no parsed tokenizer), then each tensor's bytes.
        meta, tensors = gl.read_index(path)
        cfg = gl.Config.of(meta, tensors, path)
        H, nh, nkv, D, F = cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn

        def need(name: str, shape: tuple[int, ...], types: tuple[str, ...]):
            t = tensors.get(name)
            if t is None:
                raise gl.ModelFileError(f"{path}: tensor {name} is missing")
            if tuple(int(v) for v in t.shape) != shape:
                raise gl.ModelFileError(f"{path}: {name} has ggml shape {list(t.shape)}, the metadata says {list(shape)}")
            if t.type_name not in types:
                raise gl.ModelFileError(f"{path}: {name} is {t.type_name}; this library takes {' or '.join(types)}")
            return t

        blocks, vectors = ("Q4_1", "Q8_0"), ("F32", "F16")
        width = (nh + 2 * nkv) * D
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            for name, shape in (("attn_q", (H, nh * D)), ("attn_k", (H, nkv * D)), ("attn_v", (H, nkv * D)),
                                ("attn_output", (nh * D, H)), ("ffn_gate", (H, F)), ("ffn_up", (H, F)),
                                ("ffn_down", (F, H))):
                need(p + name + ".weight", shape, blocks)
            for name in ("attn_norm", "ffn_norm"):
                need(p + name + ".weight", (H,), vectors)
            if cfg.qkv_bias:
                for x, n in (("q", nh * D), ("k", nkv * D), ("v", nkv * D)):
                    need(f"{p}attn_{x}.bias", (n,), vectors)
        need("token_embd.weight", (H, cfg.vocab), ("Q8_0",))
        need("output_norm.weight", (H,), vectors)
        if not cfg.tied:
            need("output.weight", (H, cfg.vocab), blocks)
        neox = cfg.rope == "neox"
        rows_q, rows_k = (neox_rows(nh, D), neox_rows(nkv, D)) if neox else (None, None)

        file = open(path, "rb")

        def raw(t) -> np.ndarray:
            # read, not the reader's memory map: touched pages of a map count in the
            # process's resident memory until it is unmapped, and only the packed copy is kept
            file.seek(t.offset)
            return np.frombuffer(file.read(t.n_bytes), dtype=np.uint8)

        def q(*names: str, order: tuple = ()) -> tuple[np.ndarray, int]:
            packed = []
            for j, name in enumerate(names):
                t = tensors[name]
                k, n = (int(v) for v in t.shape[:2])
                rows, fmt = bk.pack_gguf(raw(t), t.type_name, n, k)
                if j < len(order) and order[j] is not None:
                    rows = rows[order[j]]          # whole rows move: each keeps the file's blocks
                packed.append((rows, fmt))
            if len({fmt for _, fmt in packed}) != 1:
                raise gl.ModelFileError(f"{path}: {', '.join(names)}: one block format expected (they are fused)")
            return np.concatenate([p for p, _ in packed]), packed[0][1]

        def floats(name: str) -> np.ndarray:
            t = tensors[name]
            return raw(t).view("<f4" if t.type_name == "F32" else "<f2").astype(np.float64)   # exact in float64

        def gain(name: str) -> np.ndarray:
            return np.floor(floats(name) * (1 << (NORM_BITS + ACT_BITS)) + 0.5).astype(np.int64)

        def qkv_dense(p: str) -> tuple[Dense, np.ndarray | None]:
            matrix = q(p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight", order=(rows_q, rows_k))
            if not cfg.qkv_bias:
                return Dense(*matrix, bk.dense_shift(ACT_BITS, QKV_BITS), *QKV_RANGE), None
            parts = [floats(f"{p}attn_{x}.bias") for x in "qkv"]
            if neox:
                parts[0], parts[1] = parts[0][rows_q], parts[1][rows_k]
            bias = np.floor(np.concatenate(parts) * (1 << QKV_BITS) + 0.5).astype(np.int64)
            room = QKV_MAX - int(np.abs(bias).max())
            if room < QKV_MAX // 2:
                raise gl.ModelFileError(f"{path}: {p}attn_*.bias reaches {QKV_MAX - room} at 2^-{QKV_BITS}: beyond "
                                        f"half the q/k/v range of +-{QKV_MAX}")
            return Dense(*matrix, bk.dense_shift(ACT_BITS, QKV_BITS), -room, room), bias

        layers = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            qkv, bias = qkv_dense(p)
            layers.append(Layer(
                attn_gain=gain(p + "attn_norm.weight"),
                qkv=qkv,
                o=Dense(*q(p + "attn_output.weight"), bk.dense_shift(ACT_BITS, RESIDUAL_BITS), *INT32),
                ffn_gain=gain(p + "ffn_norm.weight"),
                gate_up=Dense(*q(p + "ffn_gate.weight", p + "ffn_up.weight"),
                              bk.dense_shift(ACT_BITS, GATE_BITS), *GATE_RANGE, split=F,
                              shift1=bk.dense_shift(ACT_BITS, UP_BITS), lo1=INT32[0], hi1=INT32[1]),
                down=Dense(*q(p + "ffn_down.weight"), bk.dense_shift(SILU_BITS + UP_BITS, RESIDUAL_BITS), *INT32),
                qkv_bias=bias,
            ))
        eps = int(math.floor(cfg.rms_eps * (1 << 2 * RESIDUAL_BITS) + 0.5))
        rows = rope_rows or cfg.context_length
        cos, sin = rope_tables(rows, D, cfg.rope_theta)
        embed = Dense(*q("token_embd.weight"), bk.dense_shift(ACT_BITS, LOGIT_BITS), *INT32)
        head = embed if cfg.tied else Dense(*q("output.weight"), bk.dense_shift(ACT_BITS, LOGIT_BITS), *INT32)
        out_gain = gain("output_norm.weight")
        file.close()
        _trim_heap()
        return cls(head, layers, out_gain, eps, cos, sin, silu_table(), nh, nkv, D,
                   embed_matrix=None if cfg.tied else embed, score_mult=score_scale(D)[0], score_shift=score_scale(D)[1])

    def session(self, max_ctx: int = 2048) -> "Session":
        return Session(self, max_ctx)

    # ---------------------------------------------------------------- native model

    def native(self):
        """The C model struct (built once; it points into this model's arrays)."""
        if self._native is None:
            with _NATIVE_BUILD:
                return self._build_native()
        return self._native[0]

    def _build_native(self):
        if self._native is None:
            from opinfer import native

            keep = {}

            def arr(a, dtype=np.int64):
                a = np.ascontiguousarray(a, dtype=dtype)
                keep[id(a)] = a
                return a.ctypes.data

            def structs(ds):
                a = (native.QMat * len(ds))(*[d.native.struct for d in ds])
                keep[id(a)] = a
                return ctypes.addressof(a)

            import ctypes

            L = self.layers
            head = (native.QMat * 1)(self.head.native.struct)
            keep[id(head)] = head
            embed = head if self.tied else (native.QMat * 1)(self.embedding.native.struct)
            keep[id(embed)] = embed
            width = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
            biased = any(la.qkv_bias is not None for la in L)
            bias = arr(np.stack([la.qkv_bias if la.qkv_bias is not None else np.zeros(width, np.int64)
                                 for la in L])) if biased else None
            m = native.Model(
                n_layers=len(L), hidden=self.hidden, n_heads=self.n_heads, n_kv=self.n_kv_heads,
                head_dim=self.head_dim, ffn=L[0].down.k, vocab=self.vocab, rope_rows=self.max_ctx,
                eps=self.eps, norm_lo=INT32[0], norm_hi=INT32[1], score_mult=self.score_mult, score_shift=self.score_shift,
                prob_one=PROB_ONE, ctx_mult=CTX_MULT, ctx_shift=CTX_SHIFT, ctx_lo=INT32[0], ctx_hi=INT32[1],
                embed_shift=EMBED_SHIFT, res_lo=INT32[0], res_hi=INT32[1], silu_off=SILU_HALF,
                silu_len=len(self.silu),
                attn_gain=arr(np.stack([la.attn_gain for la in L])), ffn_gain=arr(np.stack([la.ffn_gain for la in L])),
                out_gain=arr(self.out_gain), qkv=structs([la.qkv for la in L]), o=structs([la.o for la in L]),
                gate_up=structs([la.gate_up for la in L]), down=structs([la.down for la in L]),
                head=ctypes.addressof(head), silu=arr(self.silu), cos=arr(self.cos), sin=arr(self.sin),
                embed=ctypes.addressof(embed), qkv_bias=bias)
            self._native = (m, keep)
        return self._native[0]

    def all_dense(self) -> list[Dense]:
        return [d for la in self.layers for d in (la.qkv, la.o, la.gate_up, la.down)] + [self.head] + (
            [] if self.tied else [self.embedding])

    def sliced(self, layers: int, vocab: int, rope_rows: int) -> "IntLlama":
        """The first `layers` blocks and `vocab` tokens (test models with real weights)."""
        cut = lambda d: Dense(d.packed[:vocab].copy(), d.fmt, d.shift0, d.lo0, d.hi0, mult=d.mult)  # noqa: E731
        return type(self)(cut(self.head), self.layers[:layers], self.out_gain, self.eps, self.cos[:rope_rows],
                          self.sin[:rope_rows], self.silu, self.n_heads, self.n_kv_heads, self.head_dim,
                          embed_matrix=None if self.tied else cut(self.embedding), score_mult=self.score_mult,
                          score_shift=self.score_shift)


class Session:
    """One sequence with an int16 KV cache that grows as positions are used."""

    def __init__(self, model: IntLlama, max_ctx: int = 2048):
        self.m = model
        self.max_ctx = min(max_ctx, model.max_ctx)
        self.pos = 0
        self._alloc(min(self.max_ctx, 64))

    def _alloc(self, cap: int) -> None:
        m = self.m
        shape = (len(m.layers), m.n_kv_heads, cap, m.head_dim)
        k, v = np.zeros(shape, dtype=np.int16), np.zeros(shape, dtype=np.int16)
        if getattr(self, "k", None) is not None:
            k[:, :, :self.pos], v[:, :, :self.pos] = self.k[:, :, :self.pos], self.v[:, :, :self.pos]
        self.k, self.v = k, v

    def reserve(self, n: int) -> None:
        if self.pos + n > self.max_ctx:
            raise ValueError(f"context overflow: {self.pos} + {n} > {self.max_ctx}")
        cap = self.k.shape[2]
        if self.pos + n > cap:
            self._alloc(min(max(2 * cap, self.pos + n), self.max_ctx))

    def _struct(self):
        from opinfer import native

        return native.Seq(self.k.ctypes.data, self.v.ctypes.data, self.k.shape[2], self.pos)

    def forward(self, ids, all_logits: bool = False) -> np.ndarray:
        """Append tokens; int64 logits of the last (or every) new position."""
        ids = [int(t) for t in ids]
        out = forward_many([self], [ids], all_logits=all_logits)
        return out[0]

    def generate(self, ids, max_tokens: int, stop_ids=(), sampler=None, stop_sequences=()) -> "Generation":
        """Append the prompt `ids`, then generate at most `max_tokens` tokens.

        Each token is opinfer.engine.sampling.choose(logits, sampler, generated):
        the logits penalised by the sampler's presence/frequency penalties and
        logit bias, then their argmax (ties to the lowest id) when `sampler` is
        None or has temperature 0, otherwise sampling.next_token(..., step)
        with step the index of the generated token (0 for the first). Generation stops
        after a token of `stop_ids` (kept in the output) or as soon as the
        generated ids end with one of `stop_sequences` (token-id sequences,
        kept too): finish reason "stop"; otherwise after `max_tokens`
        tokens: "length". Returns Generation(ids, finish_reason)."""
        return generate_sessions([self], [dict(ids=ids, max_tokens=max_tokens, stop_ids=stop_ids, sampler=sampler,
                                              stop_sequences=stop_sequences)])[0]


def forward_many(sessions: list[Session], batch: list, all_logits: bool = False) -> list[np.ndarray]:
    """Session.forward of several sessions in one native pass: the row-wise ops run
    over all sessions' rows stacked (matrix-matrix products), attention per session
    on its own cache. Every op is exact and row-local, so each session gets the bits
    it would get alone (tests/unit/test_batch_determinism.py)."""
    from opinfer import native

    if not sessions:
        return []
    m = sessions[0].m
    seqs = [[int(t) for t in ids] for ids in batch]
    for s, ids in zip(sessions, seqs):
        if s.m is not m:
            raise ValueError("forward_many: sessions of one model")
        if any(not 0 <= t < m.vocab for t in ids):
            raise ValueError(f"token ids must be in [0, {m.vocab})")
        s.reserve(len(ids))
    structs = (native.Seq * len(sessions))(*[s._struct() for s in sessions])
    tokens = np.array([t for ids in seqs for t in ids] or [0], dtype=np.int64)
    ntok = np.array([len(ids) for ids in seqs], dtype=np.int64)
    rows = int(ntok.sum()) if all_logits else len(sessions)
    logits = np.empty((max(rows, 1), m.vocab), dtype=np.int64)
    rc = native.lib().oi_forward(m.native(), len(sessions), structs, tokens.ctypes.data, ntok.ctypes.data,
                                 1 if all_logits else 0, logits.ctypes.data)
    if rc != 0:
        raise ValueError("the native forward refused its input (a gate outside the SiLU table)")
    for s, n in zip(sessions, ntok):
        s.pos += int(n)
    if all_logits:
        return list(np.split(logits[:rows], np.cumsum(ntok)[:-1]))
    return list(logits[:rows])


def _ends_with(out: list[int], sequences) -> bool:
    return any(len(out) >= len(q) and tuple(out[-len(q):]) == q for q in sequences)


class Stream:
    """One request's generation inside a Decoder: the prompt still to feed, the tokens so far.

    request = dict(ids, max_tokens, stop_ids=(), sampler=None, stop_sequences=()).
    The next token is a function of this stream's own logits row and its own
    tokens so far only (choose), never of the other streams in the batch."""

    def __init__(self, session: Session, request: dict, prompt_logits: bool = False):
        self.session, self.request = session, request
        self.prompt = [int(t) for t in request["ids"]]
        self.max_tokens = int(request["max_tokens"])
        self.sampler = request.get("sampler")
        self.stop_ids = {int(t) for t in request.get("stop_ids", ())}
        self.stops = [tuple(int(t) for t in q) for q in request.get("stop_sequences", ()) if len(q)]
        self.prompt_logits = prompt_logits
        self.fed = 0                    # prompt tokens already in the cache
        self.out: list[int] = []
        self.reason: str | None = None if self.max_tokens > 0 else "length"
        self.error: Exception | None = None
        if self.reason is None and not self.prompt:
            raise ValueError("a generation needs at least one prompt token")

    @property
    def done(self) -> bool:
        return self.reason is not None or self.error is not None

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)

    def feed(self, budget: int | None) -> list[int]:
        """The tokens this stream appends at the next step: a prompt chunk, or its last token."""
        if self.prefilling:
            return self.prompt[self.fed:] if budget is None else self.prompt[self.fed:self.fed + budget]
        return [self.out[-1]]

    def choose(self, logits: np.ndarray) -> int:
        """The committed sampling rule, sampling.choose: the logits penalised by the sampler's
        presence/frequency penalties and logit bias (counting this stream's tokens so far),
        then their argmax (ties to the lowest id) when there is no sampler or its temperature
        is 0, else sampling.next_token at step len(out)."""
        from opinfer.engine.sampling import choose

        return choose(logits, self.sampler, self.out)

    def drawn_from(self, logits: np.ndarray) -> np.ndarray:
        """The row the next token is drawn from (the penalised logits; logprobs read it)."""
        from opinfer.engine.sampling import penalise

        return penalise(logits, self.sampler, self.out)

    def accept(self, token: int) -> None:
        self.out.append(token)
        if token in self.stop_ids or _ends_with(self.out, self.stops):
            self.reason = "stop"
        elif len(self.out) >= self.max_tokens:
            self.reason = "length"


class Event(NamedTuple):
    """What one step did for one stream: `token` drawn from the `logits` row (None while the
    prompt is still being fed), and, for a stream that asked for them, the logits rows of the
    prompt positions [start, start + len(prompt_rows)) fed at this step."""

    stream: Stream
    token: int | None
    logits: np.ndarray | None
    prompt_rows: np.ndarray | None
    start: int


class Decoder:
    """Iteration-level scheduling of many generations (continuous batching).

    Streams join (add) and leave (done, remove) between steps. Each step runs one
    native pass (forward_many) over every running stream: one token for each stream
    that is decoding, and prompt chunks of newcomers, at most `prefill_tokens` prompt
    tokens per step in all (None: whole prompts), so a running stream waits at most
    one pass of len(streams) + prefill_tokens rows for its next token. Every op is
    exact and row-local and each stream chooses its tokens from its own row, so a
    stream's tokens are the same whatever joins or leaves around it, and however its
    prompt is chunked (tests/node/test_scheduler.py)."""

    def __init__(self, prefill_tokens: int | None = None):
        if prefill_tokens is not None and prefill_tokens < 1:
            raise ValueError("prefill_tokens must be at least 1")
        self.prefill_tokens = prefill_tokens
        self.streams: list[Stream] = []

    def add(self, session: Session, request: dict, prompt_logits: bool = False) -> Stream:
        stream = Stream(session, request, prompt_logits)
        if not stream.done:
            self.streams.append(stream)
        return stream

    def remove(self, stream: Stream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)

    def plan(self) -> list[tuple[Stream, list[int]]]:
        """The streams of the next step and what each appends (arrival order for prefill)."""
        budget, batch = self.prefill_tokens, []
        for s in self.streams:
            if not s.prefilling:
                batch.append((s, s.feed(None)))
            elif budget is None or budget > 0:
                ids = s.feed(budget)
                batch.append((s, ids))
                budget = None if budget is None else budget - len(ids)
        return batch

    def step(self) -> tuple[list[Event], list[Stream]]:
        """One pass; returns the events and the streams that finished (and left) at this step."""
        batch = self.plan()
        if not batch:
            return [], []
        from opinfer.engine.sampling import choose_many

        rows = self._forward(batch)
        events, finished, drawing = [], [], []
        for (s, ids), out in zip(batch, rows):
            if s.error is not None:
                finished.append(s)
                continue
            prompt_rows, start = None, s.fed
            if s.prefilling:
                if s.prompt_logits:
                    prompt_rows = out
                s.fed += len(ids)
            if s.prefilling:                       # more prompt to feed: nothing to draw yet
                events.append(Event(s, None, None, prompt_rows, start))
                continue
            drawing.append((len(events), s, out[-1]))
            events.append(Event(s, None, None, prompt_rows, start))
        # every decoding stream's token from its own row and tokens (choose, row by row), in one
        # call: the sampled rows' weights and picks in native code, each penalised row computed once
        tokens, drawn = choose_many([last for _, _, last in drawing], [s.sampler for _, s, _ in drawing],
                                    [s.out for _, s, _ in drawing])
        for (i, s, _), token, row in zip(drawing, tokens, drawn):
            s.accept(token)
            events[i] = events[i]._replace(token=token, logits=row)
            if s.done:
                finished.append(s)
        for s in finished:
            self.remove(s)
        return events, finished

    def _forward(self, batch) -> list:
        """Logits rows per stream ([n, V] for prompt-logits chunks, else [1, V]). A pass the
        native step refuses is run again stream by stream, so only the culprit fails (a
        refused pass moved no position; the re-run writes the same cache entries)."""
        every = any(s.prompt_logits and s.prefilling for s, _ in batch)
        sessions, feeds = [s.session for s, _ in batch], [ids for _, ids in batch]
        try:
            return self._rows(forward_many(sessions, feeds, all_logits=every), every)
        except ValueError as exc:
            if len(batch) == 1:
                batch[0][0].error = exc
                return [None]
        rows = []
        for s, ids in batch:
            try:
                rows.append(self._rows(forward_many([s.session], [ids], all_logits=every), every)[0])
            except ValueError as exc:
                s.error = exc
                rows.append(None)
        return rows

    @staticmethod
    def _rows(out: list, every: bool) -> list:
        return [r if every else r[None, :] for r in out]


def generate_sessions(sessions: list[Session], requests: list[dict]) -> list["Generation"]:
    """Generate for several sessions at once (continuous batching of their decode steps):
    the same tokens as each request alone."""
    dec = Decoder()
    streams = [dec.add(s, r) for s, r in zip(sessions, requests)]
    while dec.streams:
        dec.step()
    for s in streams:
        if s.error is not None:
            raise s.error
    return [Generation(s.out, s.reason) for s in streams]


def generate_many(model: IntLlama, requests: list[dict], max_ctx: int = 2048) -> list["Generation"]:
    """Session.generate for several requests at once: request = dict(ids, max_tokens,
    stop_ids=(), sampler=None, stop_sequences=()). The same tokens as each request alone."""
    return generate_sessions([model.session(max_ctx) for _ in requests], requests)


class Generation(NamedTuple):
    """Generated token ids and why generation ended: "stop" (a stop id or a
    stop sequence, included in ids) or "length" (max_tokens reached)."""

    ids: list[int]
    finish_reason: str


# ---------------------------------------------------------------- the numpy reference

def reference_forward(model: IntLlama, ids, cache: dict | None = None, on_op=None) -> np.ndarray:
    """The same rules as the native forward, in plain numpy op by op: int64 logits of
    every new position. `cache` (a dict, updated) holds the integer K and V per layer
    and the position; `on_op(name, layer, value)` sees every intermediate tensor."""
    m = model
    cache = {} if cache is None else cache
    pos = cache.get("pos", 0)
    ids = np.asarray(list(ids), dtype=np.int64)
    T, D, nh, nkv = len(ids), m.head_dim, m.n_heads, m.n_kv_heads
    see = on_op or (lambda *a: None)
    x = m.embed_rows(ids)
    see("embed", -1, x)
    cos, sin = m.cos[pos:pos + T], m.sin[pos:pos + T]
    for i, la in enumerate(m.layers):
        h = rms_norm(x, la.attn_gain, m.eps)
        qkv = la.qkv.reference(h)
        if la.qkv_bias is not None:
            qkv = qkv + la.qkv_bias
        see("qkv", i, qkv)
        qk = rope(qkv[:, :(nh + nkv) * D].reshape(T, nh + nkv, D), cos, sin)
        q, k = qk[:, :nh], qk[:, nh:]
        v = qkv[:, (nh + nkv) * D:].reshape(T, nkv, D)
        kc = np.concatenate([cache.get(("k", i), np.zeros((0, nkv, D), np.int64)), k])
        vc = np.concatenate([cache.get(("v", i), np.zeros((0, nkv, D), np.int64)), v])
        cache[("k", i)], cache[("v", i)] = kc, vc
        ctx = np.empty((T, nh, D), dtype=np.int64)
        for r in range(T):
            n = pos + r + 1
            for hd in range(nh):
                g = hd // (nh // nkv)
                scores = (kc[:n, g] @ q[r, hd])[None, :]
                p = softmax_rows(scores, m.score_mult, m.score_shift, PROB_ONE)
                ctx[r, hd] = requant(p @ vc[:n, g], CTX_MULT, CTX_SHIFT, *INT32)
        ctx = ctx.reshape(T, nh * D)
        see("ctx", i, ctx)
        x = x + la.o.reference(ctx)
        h = rms_norm(x, la.ffn_gain, m.eps)
        gu = la.gate_up.reference(h)
        F = gu.shape[1] // 2
        mid = m.silu[gu[:, :F] + SILU_HALF] * gu[:, F:]
        see("swiglu", i, mid)
        x = x + la.down.reference(mid)
        see("residual", i, x)
    cache["pos"] = pos + T
    return m.head.reference(rms_norm(x, m.out_gain, m.eps))

