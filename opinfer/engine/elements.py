"""One element of each op, in plain Python integers.

These are the exact rules that `StepVerifier` re-executes on-chain (the
`elem_*` functions there); the vectorised engine (`quant.py`, `minilm.py`)
computes whole tensors with the same rules, and tests check all three agree
bit for bit (tests/unit/test_elements.py, tests/contracts/test_shared_vectors.py).
"""

from __future__ import annotations

from math import isqrt

LN_BITS = 8
EXP_INPUT_BITS = 8        # exp inputs in units of 2^-8 natural-log units
EXP_ONE_BITS = 16         # exp outputs scaled by 2^16
EXP_INPUT_MAX = 1 << 20   # larger inputs saturate (exp(-4096) is 0 at 2^16 anyway)
INV_LN2_Q8 = 94548        # round(2^16 / ln 2): x / ln 2 with 16 fractional bits, from 8
# 2^-t for t in [0, 1): Taylor coefficients of exp(-t ln 2) to degree 6, scaled by 2^30.
EXP2_COEFFS = (1073741824, -744261118, 257941248, -59597083, 10327387, -1431680, 165394)


def requant(acc: int, mult: int, shift: int, lo: int, hi: int) -> int:
    scaled = acc * mult
    if shift > 0:
        scaled = (scaled + (1 << (shift - 1))) >> shift
    return min(max(scaled, lo), hi)


def round_div(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


def dot(a: list[int], w: list[int], bias: int, mult: int, shift: int, lo: int, hi: int) -> int:
    """A dense layer's element: requant(a . w + bias)."""
    return requant(sum(x * y for x, y in zip(a, w)) + bias, mult, shift, lo, hi)


def layer_norm(row: list[int], col: int, gain: int, beta: int, eps: int, lo: int, hi: int) -> int:
    n = len(row)
    mean = round_div(sum(row), n)
    var = round_div(sum((x - mean) * (x - mean) for x in row), n) + eps
    std = max(isqrt(var), 1)
    return min(max(round_div((row[col] - mean) * gain, std << LN_BITS) + beta, lo), hi)


def exp_neg(u: int) -> int:
    """2^16 * exp(-u / 2^8) for u >= 0, in integers: exp(-x) = 2^-(x / ln 2);
    the fractional power of two is a degree-6 polynomial at 2^30 evaluated by
    Horner with flooring shifts, then shifted down by the integer part."""
    y = (u * INV_LN2_Q8 + (1 << (EXP_INPUT_BITS - 1))) >> EXP_INPUT_BITS  # x / ln2, 16 fractional bits
    q, f = y >> 16, y & 0xFFFF
    if q >= 32:
        return 0
    p = EXP2_COEFFS[-1]
    for c in reversed(EXP2_COEFFS[:-1]):
        p = c + ((p * f) >> 16)
    return (p + (1 << (q + 13))) >> (q + 14)


def softmax(row: list[int], col: int, mult: int, shift: int, one: int) -> int:
    """Probability `col` of a scores row: z = max - s, u = requant(z), p = round_div(e * one, sum e)."""
    top = max(row)
    exps = [exp_neg(requant(top - s, mult, shift, 0, EXP_INPUT_MAX)) for s in row]
    return round_div(exps[col] * one, sum(exps))


def residual(a: int, x: int, mult_a: int, shift_a: int, mult_x: int, shift_x: int, lo: int, hi: int) -> int:
    """Two branches brought to one scale and added."""
    return requant(a, mult_a, shift_a, lo, hi) + requant(x, mult_x, shift_x, lo, hi)


def l2_normalise(row: list[int], col: int, out_bits: int) -> int:
    norm = max(isqrt(sum(v * v for v in row)), 1)
    return round_div(row[col] << out_bits, norm)
