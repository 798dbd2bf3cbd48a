"""Integer arithmetic with pinned semantics, shared by every op.

Rounding rule (everywhere): round half up, i.e. floor(x + 1/2), computed
with arithmetic (flooring) shifts and floor division, so negative ties round
towards +infinity too. Saturation clamps to the target range. Exact integer
matmuls run on float BLAS only within bounds where float arithmetic is exact
(float32 below 2^24, float64 below 2^53); the result is bit-identical to
int64 arithmetic.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

INT8 = (-128, 127)
INT16 = (-32768, 32767)
INT32 = (-(2**31), 2**31 - 1)


def requant(acc, multiplier, shift: int, lo: int, hi: int) -> np.ndarray:
    """clamp((acc * multiplier + 2^(shift-1)) >> shift, lo, hi); `multiplier`
    may be a scalar or a per-column vector."""
    scaled = np.asarray(acc, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
    if shift > 0:
        scaled = (scaled + (1 << (shift - 1))) >> shift
    return np.clip(scaled, lo, hi)


def round_div(num, den) -> np.ndarray:
    """floor(num / den + 1/2) for den > 0 (round half up)."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    return (2 * num + den) // (2 * den)


def penalise(logits, presence: int, frequency: int, bias_entries, generated) -> np.ndarray:
    """elements.penalty on every logit of a row (token t = index t): counts of
    t among `generated` (ids outside the row count for nothing), the biases of
    the entries naming t summed (entries beyond the row match nothing)."""
    from opinfer.semantics import elements as el

    z = np.asarray(logits, dtype=np.int64).ravel()
    vocab = z.size
    adj = np.zeros(vocab, dtype=np.int64)
    if presence or frequency:
        ids = np.asarray(list(generated), dtype=np.int64)
        counts = np.bincount(ids[(ids >= 0) & (ids < vocab)], minlength=vocab)
        adj -= (presence * (counts > 0) + frequency * counts) * el.PENALTY_SCALE
    for token, bias in bias_entries:
        if 0 <= token < vocab:
            adj[token] += bias * el.BIAS_SCALE
    return np.clip(z + adj, *el.LOGIT_RANGE)


def isqrt(x) -> np.ndarray:
    """floor(sqrt(x)) for 0 <= x < 2^62, exactly: a float estimate corrected
    by integer comparisons (the result does not depend on float rounding)."""
    x = np.asarray(x, dtype=np.int64)
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    r = np.where(r * r > x, r - 1, r)
    r = np.where((r + 1) * (r + 1) <= x, r + 1, r)
    return r


def exact_matmul(a: np.ndarray, b: np.ndarray, a_max: int, b_max: int) -> np.ndarray:
    """a @ b for integer matrices with |a| <= a_max, |b| <= b_max, exact.

    Uses float32 when every partial sum fits in 2^24 (splitting the inner
    dimension into exact blocks), float64 below 2^53. For a few rows of a
    16-bit left operand times 8-bit weights, the operand is split into a high
    and a low signed byte, stacked as extra rows of one float32 product. Every
    path gives the same bits; only the speed differs."""
    if 128 < a_max <= 32768 and b_max <= 128 and a.shape[-2] <= 16:
        # Few rows (decoding): reading float32 weights once beats float64.
        a = np.asarray(a, dtype=np.int64)
        lo = ((a + 128) & 255) - 128         # [-128, 127]
        hi = (a - lo) >> 8                   # [-128, 128]
        rows = a.shape[-2]
        both = exact_matmul(np.concatenate([hi, lo], axis=-2), b, 128, b_max)
        return (both[..., :rows, :] << 8) + both[..., rows:, :]
    k = a.shape[-1]
    per_term = a_max * b_max
    block = (1 << 24) // max(per_term, 1)
    if block >= k:
        return (a.astype(np.float32, copy=False) @ b.astype(np.float32, copy=False)).astype(np.int64)
    if block >= 64:
        out = None
        for start in range(0, k, block):
            part = (a[..., start:start + block].astype(np.float32, copy=False)
                    @ b[..., start:start + block, :].astype(np.float32, copy=False))
            part = part.astype(np.int64)
            out = part if out is None else out + part
        return out
    if per_term * k >= 1 << 53:
        raise OverflowError("integer matmul would not be exact in float64")
    return (a.astype(np.float64, copy=False) @ b.astype(np.float64, copy=False)).astype(np.int64)


@lru_cache(maxsize=64)
def _exact_block(k: int, per_term: int) -> int:
    """The largest divisor B of k with per_term * B < 2^24."""
    limit = ((1 << 24) - 1) // max(per_term, 1)
    return max(d for d in range(1, min(limit, k) + 1) if k % d == 0) if limit >= 1 else 0


def exact_matmul_blocked(a: np.ndarray, b: np.ndarray, a_max: int, b_max: int,
                         b_row_max: np.ndarray | None = None) -> np.ndarray:
    """a @ b for an integer matrix a [T, K] with |a| <= a_max and integer
    weights b [K, N] (float32 holding integers) with |b| <= b_max, exact.

    One row (decoding): K is split into nb equal blocks so that, for every
    block and output column, sum over the block of |a_k| * |b_kn| < 2^24:
    then every partial sum of a block's float32 product is an integer below
    2^24, exact whatever the summation order. The block results are added in
    float64, exact below 2^53. nb is the smallest divisor of K (from the
    candidates below) whose blocks pass the bound, checked with integers
    against `b_row_max` (max_n |b_kn| per k) when given; without it, or as
    the last resort, blocks of B with a_max * b_max * B < 2^24 (the largest
    such divisor of K). This reads the float32 weights once. Several rows
    (prefill): each value is split as a = R * hi + lo with |hi|, |lo| <= R/2
    (R a power of two near sqrt(a_max)); when (R/2) * b_max * K < 2^24 the
    stacked [hi; lo] rows go through one exact float32 product, else float64
    (exact while a_max * b_max * K < 2^53). Every path gives the same bits;
    only the speed differs."""
    k, n = b.shape
    per_term = a_max * b_max
    if per_term * k >= 1 << 53:
        raise OverflowError("integer matmul would not be exact in float64")
    if a.shape[0] == 1:
        nb = _blocks_needed(a[0], b_row_max, k) if b_row_max is not None else 0
        if not nb:
            block = _exact_block(k, per_term)
            nb = k // block if block >= 8 else 0
        if nb == 1:
            return (a.astype(np.float32) @ b).astype(np.int64)
        if nb:
            # One 2-D product per block (a batched 1-row matmul is ~50x slower
            # than these gemv calls); each block's result is an exact integer.
            kb = k // nb
            a32 = a.astype(np.float32)
            out = np.zeros((1, n), dtype=np.float64)
            for i in range(nb):
                out += a32[:, i * kb:(i + 1) * kb] @ b[i * kb:(i + 1) * kb]
            return out.astype(np.int64)
    radix_bits = (max(a_max, 1).bit_length() + 1) // 2
    half = 1 << (radix_bits - 1)
    if max((a_max + half) >> radix_bits, half) * b_max * k < _EXACT:
        rows = a.shape[0]
        out = np.empty((rows, n), dtype=np.int64)
        step = max(1, (1 << 22) // max(n, 1))          # bounded temporaries for wide outputs
        for start in range(0, rows, step):
            part = np.asarray(a[start:start + step], dtype=np.int64)
            hi = (part + half) >> radix_bits                # |hi| <= (a_max + R/2) / R
            lo = part - (hi << radix_bits)                  # -R/2 <= lo < R/2
            both = np.concatenate([hi, lo]).astype(np.float32) @ b
            m = part.shape[0]
            out[start:start + m] = (both[:m].astype(np.int64) << radix_bits) + both[m:].astype(np.int64)
        return out
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


_EXACT = 1 << 24


def _blocks_needed(row: np.ndarray, b_row_max: np.ndarray, k: int) -> int:
    """The fewest equal blocks (1, 2, 3, 4, 6 or 8, dividing k) over which
    sum |row_k| * b_row_max_k stays below 2^24 in every block; 0 if none."""
    c = np.abs(row) * b_row_max
    if int(c.sum()) < _EXACT:
        return 1
    for nb in (2, 3, 4, 6, 8):
        if k % nb == 0 and int(c.reshape(nb, -1).sum(1).max()) < _EXACT:
            return nb
    return 0


def quantize_symmetric(x: np.ndarray, scale, lo: int, hi: int) -> np.ndarray:
    """round(x / scale) clamped (used only when building a model, never at inference)."""
    return np.clip(np.floor(np.asarray(x, dtype=np.float64) / scale + 0.5), lo, hi).astype(np.int64)


def multiplier_shift(real: float, bits: int = 15) -> tuple[int, int]:
    """(M, s) with M / 2^s ~= real and 2^(bits-1) <= M < 2^bits (model build time)."""
    if real <= 0:
        raise ValueError("scale ratio must be positive")
    shift = 0
    while real * (1 << shift) < (1 << (bits - 1)):
        shift += 1
    while real * (1 << shift) >= (1 << bits):
        shift -= 1
    if shift < 0:
        raise ValueError(f"scale ratio {real} too large for a right shift")
    return int(np.floor(real * (1 << shift) + 0.5)), shift


def channel_multipliers(ratios: np.ndarray, bits: int = 20) -> tuple[np.ndarray, int]:
    """Per-channel multipliers sharing one shift: M[c] / 2^s ~= ratios[c],
    with max M < 2^bits (model build time)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    top = float(ratios.max())
    shift = 0
    while top * (1 << (shift + 1)) < (1 << bits):
        shift += 1
    return np.floor(ratios * (1 << shift) + 0.5).astype(np.int64), shift


# Integer exp for softmax; the rule is documented in opinfer/semantics/elements.exp_neg.
_EXP2_COEFFS = (1073741824, -744261118, 257941248, -59597083, 10327387, -1431680, 165394)
EXP_INPUT_MAX = 1 << 20


def exp_neg(u) -> np.ndarray:
    """Vectorised elements.exp_neg: 2^16 * exp(-u / 2^8) for 0 <= u <= 2^20."""
    u = np.asarray(u, dtype=np.int64)
    y = (u * 94548 + 128) >> 8
    q, f = y >> 16, y & 0xFFFF
    p = np.full(u.shape, _EXP2_COEFFS[-1], dtype=np.int64)
    for c in reversed(_EXP2_COEFFS[:-1]):
        p = c + ((p * f) >> 16)
    qs = np.minimum(q, 31)
    return np.where(q >= 32, 0, (p + (np.int64(1) << (qs + 13))) >> (qs + 14))


def softmax_rows(scores: np.ndarray, mult: int, shift: int, one: int) -> np.ndarray:
    """Row-wise integer softmax (elements.softmax on every element)."""
    z = scores.max(-1, keepdims=True) - scores
    e = exp_neg(requant(z, mult, shift, 0, EXP_INPUT_MAX))
    return round_div(e * one, e.sum(-1, keepdims=True))


def l2_normalise(row: np.ndarray, out_bits: int) -> np.ndarray:
    """elements.l2_normalise on every element of one row, in Python integers
    (the sum of squares can pass 2^63)."""
    from math import isqrt as isqrt_int

    values = [int(v) for v in row]
    norm = max(isqrt_int(sum(v * v for v in values)), 1)
    return np.array([(2 * (v << out_bits) + norm) // (2 * norm) for v in values], dtype=np.int64)
