"""Float32 numpy reference forward pass of SmolLM2-135M-Instruct.

This is the yardstick an integer engine is compared against (top-1 next-token
agreement), so it favours plain, checkable numpy over speed. It computes
exactly llama.cpp's llama graph on the dequantized GGUF weights:

    x = tok_embd[ids]
    per layer:
        h = rms_norm(x) * attn_norm
        q, k, v = h @ wq.T, h @ wk.T, h @ wv.T        (9, 3, 3 heads of 64)
        q, k = rope(q), rope(k)                         adjacent pairs, see below
        a = softmax(q k^T / sqrt(64) + causal mask) v   each KV head serves 3 q heads
        x = x + a @ wo.T
        h = rms_norm(x) * ffn_norm
        x = x + (silu(h @ w_gate.T) * (h @ w_up.T)) @ w_down.T
    logits = (rms_norm(x) * output_norm) @ tok_embd.T  (tied LM head)

RoPE: the GGUF Q/K rows are in llama.cpp's permuted order (see
`gguf_loader`), so RoPE rotates adjacent pairs ``(x[2i], x[2i+1])`` of each
head by angle ``pos * rope_theta ** (-2i / head_dim)``, as llama.cpp's
``LLAMA_ROPE_TYPE_NORM`` does; this equals HF's ``rotate_half`` RoPE on the
original (unpermuted) weights. Positions start at 0.

Everything is float32 (activations, KV cache, softmax); matmuls go to BLAS.
The KV cache holds post-RoPE keys and values, ``[n_layers, n_kv_heads,
max_ctx, head_dim]`` each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from opinfer.models.smollm2.gguf import SmolLM2Weights, load_weights

F32 = np.float32


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axis."""
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=F32)
    return (x / np.sqrt(ms + F32(eps))) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1) + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def rope_tables(max_ctx: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, ``[max_ctx, head_dim // 2]`` float32: angle of pair i at
    position p is ``p * theta ** (-2i / head_dim)`` (computed in float64)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(max_ctx, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(F32), np.sin(angles).astype(F32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs of the last axis.

    `x` is ``[T, heads, head_dim]``; `cos`, `sin` are ``[T, head_dim // 2]``
    for the T positions. Pair i is ``(x[..., 2i], x[..., 2i+1])``."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    c = cos[:, None, :]
    s = sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def apply_rope_half(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """HF's ``rotate_half`` RoPE: pair i is ``(x[..., i], x[..., i + D/2])``.

    Only for cross-checks against weights in HF order (`unpermute_qk`)."""
    half = x.shape[-1] // 2
    x0 = x[..., :half]
    x1 = x[..., half:]
    c = cos[:, None, :]
    s = sin[:, None, :]
    return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)


class SmolLM2Reference:
    """Float32 SmolLM2 with a KV cache, one sequence at a time.

    ``prefill(ids)`` starts a new sequence, ``step(token)`` appends one token;
    both return the float32 logits ``[vocab]`` of the last position.
    ``forward(ids)`` appends several tokens and can return every position's
    logits."""

    def __init__(
        self,
        weights: SmolLM2Weights | None = None,
        max_ctx: int = 2048,
        rope: str = "adjacent",
    ) -> None:
        self.w = weights if weights is not None else load_weights()
        w = self.w
        if max_ctx > w.context_length:
            raise ValueError(f"max_ctx {max_ctx} exceeds the model's {w.context_length}")
        if w.n_heads % w.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        self.max_ctx = max_ctx
        # "adjacent" is right for GGUF weights; "half" exists so tests can
        # show it is wrong for them (and right for unpermuted weights).
        self._rope = {"adjacent": apply_rope, "half": apply_rope_half}[rope]
        self.cos, self.sin = rope_tables(max_ctx, w.head_dim, w.rope_theta)
        shape = (w.n_layers, w.n_kv_heads, max_ctx, w.head_dim)
        self.k_cache = np.zeros(shape, dtype=F32)
        self.v_cache = np.zeros(shape, dtype=F32)
        self.pos = 0  # number of cached positions

    def reset(self) -> None:
        self.pos = 0

    # -- one block -----------------------------------------------------

    def _attention(self, layer_index: int, h: np.ndarray) -> np.ndarray:
        """Self-attention of the T new positions ``h`` ``[T, H]`` over the
        cache plus themselves; writes their K/V into the cache."""
        w = self.w
        layer = w.layers[layer_index]
        T = h.shape[0]
        start, end = self.pos, self.pos + T
        D, nh, nkv = w.head_dim, w.n_heads, w.n_kv_heads
        group = nh // nkv

        q = (h @ layer.wq.T).reshape(T, nh, D)
        k = (h @ layer.wk.T).reshape(T, nkv, D)
        v = (h @ layer.wv.T).reshape(T, nkv, D)
        cos, sin = self.cos[start:end], self.sin[start:end]
        q = self._rope(q, cos, sin)
        k = self._rope(k, cos, sin)

        self.k_cache[layer_index, :, start:end] = k.transpose(1, 0, 2)
        self.v_cache[layer_index, :, start:end] = v.transpose(1, 0, 2)
        keys = self.k_cache[layer_index, :, :end]  # [nkv, S, D]
        values = self.v_cache[layer_index, :, :end]  # [nkv, S, D]

        # Query head j uses KV head j // group (llama.cpp / HF GQA order).
        qg = q.transpose(1, 0, 2).reshape(nkv, group * T, D)  # rows: (head-in-group, t)
        scores = (qg @ keys.transpose(0, 2, 1)) * F32(1.0 / np.sqrt(D))  # [nkv, group*T, S]
        scores = scores.reshape(nkv, group, T, end)
        # Causal mask: new position start+t sees cache slots 0..start+t.
        mask = np.arange(end)[None, :] > (start + np.arange(T))[:, None]  # [T, S]
        scores = np.where(mask, F32(-np.inf), scores)
        probs = softmax(scores, axis=-1).reshape(nkv, group * T, end)
        out = probs @ values  # [nkv, group*T, D]
        out = out.reshape(nh, T, D).transpose(1, 0, 2).reshape(T, nh * D)
        return out @ layer.wo.T

    def _ffn(self, layer_index: int, h: np.ndarray) -> np.ndarray:
        layer = self.w.layers[layer_index]
        return (silu(h @ layer.w_gate.T) * (h @ layer.w_up.T)) @ layer.w_down.T

    # -- whole model ---------------------------------------------------

    def forward(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append `ids` to the sequence; logits of the last new position
        ``[vocab]``, or of every new position ``[T, vocab]`` with
        `all_logits`."""
        w = self.w
        ids = np.asarray(list(ids), dtype=np.int64)
        T = ids.shape[0]
        if T == 0:
            raise ValueError("forward needs at least one token")
        if self.pos + T > self.max_ctx:
            raise ValueError(f"context overflow: {self.pos} + {T} > {self.max_ctx}")
        if ids.min() < 0 or ids.max() >= w.vocab:
            raise ValueError("token id out of range")

        x = w.tok_embd[ids].astype(F32)  # [T, H] (a copy)
        for i, layer in enumerate(w.layers):
            x = x + self._attention(i, rms_norm(x, layer.attn_norm, w.rms_eps))
            x = x + self._ffn(i, rms_norm(x, layer.ffn_norm, w.rms_eps))
        self.pos += T

        if not all_logits:
            x = x[-1:]
        logits = rms_norm(x, w.output_norm, w.rms_eps) @ w.output.T
        return logits if all_logits else logits[0]

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Start a new sequence with `ids`; logits ``[vocab]`` of the last one."""
        self.reset()
        return self.forward(ids)

    def step(self, token: int) -> np.ndarray:
        """Append one token; logits ``[vocab]`` of the next position."""
        return self.forward([int(token)])

    def generate(
        self,
        ids: Sequence[int],
        max_tokens: int,
        stop_ids: Iterable[int] = (),
    ) -> list[int]:
        """Greedy decoding from a new sequence `ids`: at most `max_tokens`
        new tokens, ending early after (and including) a token in
        `stop_ids`. Ties go to the lowest id (``np.argmax``)."""
        stop = set(int(s) for s in stop_ids)
        out: list[int] = []
        if max_tokens <= 0:
            return out
        logits = self.prefill(ids)
        while True:
            token = int(np.argmax(logits))
            out.append(token)
            if token in stop or len(out) >= max_tokens:
                return out
            logits = self.step(token)
