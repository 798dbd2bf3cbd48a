"""One element of each op, in plain Python integers.

These are the exact rules that the `ElementRules` contract re-executes
on-chain (its `elem_*` functions, which `StepVerifier` calls); the vectorised
engine (`quant.py`, `minilm.py`, `smollm2.py`, `sampling.py`) computes whole
tensors with the same rules, and tests check all three agree bit for bit
(tests/unit/test_elements.py, tests/unit/test_sampling.py,
tests/contracts/test_shared_vectors.py). docs/ops.md ("Element rules") gives
every formula and the reason for it.
"""

from __future__ import annotations

from collections import Counter
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


def exp_sum(values: list[int], top: int, mult: int, shift: int) -> int:
    """One chunk's share of a softmax's denominator: sum of
    exp_neg(requant(top - v, mult, shift, 0, EXP_INPUT_MAX)) over the chunk's
    values, `top` the whole row's maximum (no value above it). The chunks'
    sums add up to softmax's exact sum, so a long row's softmax splits into
    chunks without changing a bit (docs/ops.md, "Long context")."""
    if len(values) > CHUNK_WIDTH or any(v > top for v in values):
        raise ValueError("exp_sum: more than 256 values or a value above top")
    return sum(exp_neg(requant(top - v, mult, shift, 0, EXP_INPUT_MAX)) for v in values)


def softmax_prob(value: int, top: int, total: int, mult: int, shift: int, one: int) -> int:
    """softmax's element from the row's maximum and its exact sum of exps:
    round_div(exp_neg(requant(top - value, mult, shift, 0, EXP_INPUT_MAX)) * one, total)."""
    if value > top or total <= 0:
        raise ValueError("softmax_prob: value above top or a non-positive total")
    return round_div(exp_neg(requant(top - value, mult, shift, 0, EXP_INPUT_MAX)) * one, total)


def residual(a: int, x: int, mult_a: int, shift_a: int, mult_x: int, shift_x: int, lo: int, hi: int) -> int:
    """Two branches brought to one scale and added."""
    return requant(a, mult_a, shift_a, lo, hi) + requant(x, mult_x, shift_x, lo, hi)


def l2_normalise(row: list[int], col: int, out_bits: int) -> int:
    norm = max(isqrt(sum(v * v for v in row)), 1)
    return round_div(row[col] << out_bits, norm)


# ---------------------------------------------------------------- SmolLM2 rules

SQUARE_BITS = 26          # RMSNorm squares values of at most 26 bits (576 of them fit int64)
NORM_BITS = 8             # fractional bits of RMSNorm gains
ROPE_BITS = 14            # cos/sin tables scaled by 2^14
DENSE_IN_BITS = 7         # wide dense inputs are brought to 8-bit (7 magnitude bits) per row
TABLE_WIDTH = 256         # on chain, lookup tables are rows of 256 entries


def dense_wide(a: list[int], w: list[int], mult: int, shift: int, lo: int, hi: int,
               in_bits: int = DENSE_IN_BITS) -> int:
    """A dense element with wide inputs (smollm2.Linear.acc, in_max > 128):
    the row is shifted right by d = max(bit_length(max |a|) - in_bits, 0),
    rounding half up, and the accumulator shifted back left by d."""
    if len(a) != len(w) or not a:
        raise ValueError("dense_wide: rows must be non-empty and of one length")
    d = max(max(abs(x) for x in a).bit_length() - in_bits, 0)
    half = (1 << (d - 1)) if d > 0 else 0
    acc = sum(((x + half) >> d) * y for x, y in zip(a, w)) << d
    return requant(acc, mult, shift, lo, hi)


def rms_norm(row: list[int], col: int, gain: int, eps: int, lo: int, hi: int) -> int:
    """One element of smollm2.RMSNorm: squares of values brought to SQUARE_BITS
    bits by d = max(bit_length(max |x|) - SQUARE_BITS, 0), then
    y = clamp(round_div(x[col] * gain, max(isqrt(ms), 1) << (NORM_BITS + d)))."""
    n = len(row)
    if n == 0 or not 0 <= col < n:
        raise ValueError("rms_norm: bad row or column")
    d = max(max(abs(x) for x in row).bit_length() - SQUARE_BITS, 0)
    ms = round_div(sum((x >> d) * (x >> d) for x in row), n) + (eps >> (2 * d))
    rms = max(isqrt(ms), 1)
    return min(max(round_div(row[col] * gain, rms << (NORM_BITS + d)), lo), hi)


def rope_pair(col: int, head_dim: int) -> int:
    """Which cos/sin table column rotates element `col` of a row of heads."""
    return (col % head_dim) // 2


def rope(row: list[int], col: int, head_dim: int, cos: int, sin: int) -> int:
    """One element of smollm2.rope: the adjacent pair (a, b) holding `col` is
    rotated by the table values cos, sin (scaled by 2^ROPE_BITS) that the
    caller selected for this position and pair rope_pair(col, head_dim);
    rounding half up with flooring shifts."""
    if head_dim <= 0 or head_dim % 2 or len(row) % head_dim or not 0 <= col < len(row):
        raise ValueError("rope: bad row, column or head_dim")
    base = col - col % 2
    a, b = row[base], row[base + 1]
    half = 1 << (ROPE_BITS - 1)
    if col % 2 == 0:
        return (a * cos - b * sin + half) >> ROPE_BITS
    return (a * sin + b * cos + half) >> ROPE_BITS


def silu_gate(table_value: int, up: int) -> int:
    """SwiGLU's product: silu(gate), read from the table, times up."""
    return table_value * up


def lookup(table: list[int], index: int, offset: int) -> int:
    """table[index + offset]; out of range is an error (never wraps)."""
    pos = index + offset
    if not 0 <= pos < len(table):
        raise IndexError(f"lookup: position {pos} outside a table of {len(table)}")
    return table[pos]


def lookup_2d(row_values: list[int], index: int, offset: int, width: int = TABLE_WIDTH) -> int:
    """A lookup into a table stored as rows of `width` entries (a 4,096-entry
    table is a [16, 256] tensor): the caller proves row (index + offset) // width
    and passes its values; this picks entry (index + offset) % width of it."""
    pos = index + offset
    if not 0 < width <= TABLE_WIDTH or pos < 0 or pos % width >= len(row_values):
        raise IndexError(f"lookup_2d: position {pos} outside the row")
    return row_values[pos % width]


# ---------------------------------------------------------------- argmax and sampling

INDEX_BITS = 17           # vocabularies below 2^17
INDEX_MASK = (1 << INDEX_BITS) - 1
CHUNK_WIDTH = 256         # logits are verified in chunks of 256
TOP_P_ONE = 1 << 16       # top_p_q = round(top_p * 2^16) in [1, 2^16]
WEIGHT_MAX = 1 << 16      # sample weights lie in [0, 2^16]
BISECT_STEPS = 17         # enough for the threshold range [1, 2^16]
TEMPERATURE_MILLI_MAX = 2000  # temperature 2.0, as ElementRules.elem_sample_weight


def chunk_argmax(values: list[int], base: int) -> int:
    """max over i of (values[i] << 17) + (2^17 - 1 - (base + i)): a packed
    (value, index) whose maximum breaks ties to the lowest index; the packs of
    chunks combine by plain max."""
    if not values or base < 0 or base + len(values) > 1 << INDEX_BITS:
        raise ValueError("chunk_argmax: empty chunk or index beyond 2^17")
    return max((v << INDEX_BITS) + (INDEX_MASK - (base + i)) for i, v in enumerate(values))


def argmax_token(packed: int) -> int:
    return INDEX_MASK - (packed & INDEX_MASK)


def packed_value(packed: int) -> int:
    return packed >> INDEX_BITS


def sample_weight(logit: int, top: int, temperature_milli: int) -> int:
    """2^16 exp(-(top - logit) / T) with logits at 2^-16 and T = temperature_milli / 1000:
    u = min(round_div((top - logit) * 1000, temperature_milli << 8), EXP_INPUT_MAX)."""
    if logit > top or not 0 < temperature_milli <= TEMPERATURE_MILLI_MAX:
        raise ValueError("sample_weight: logit above top or temperature outside (0, 2000]")
    u = min(round_div((top - logit) * 1000, temperature_milli << 8), EXP_INPUT_MAX)
    return exp_neg(u)


def masked_sum(weights: list[int], tau: int) -> int:
    """Sum of the weights at least tau (the mass top-p keeps in one chunk)."""
    return sum(w for w in weights if w >= tau)


def top_p_accepts(kept: int, total: int, top_p_q: int) -> bool:
    return (kept << 16) >= top_p_q * total


def bisect_step(lo: int, hi: int, chunk_sums: list[int], total: int, top_p_q: int) -> tuple[int, int]:
    """One step of the threshold bisection; chunk_sums are the masked sums of
    every chunk at mid = (lo + hi + 1) >> 1."""
    if lo >= hi:
        return lo, hi
    mid = (lo + hi + 1) >> 1
    return (mid, hi) if top_p_accepts(sum(chunk_sums), total, top_p_q) else (lo, mid - 1)


def top_p_threshold_bisect(chunks: list[list[int]], top_p_q: int) -> int:
    """The threshold as the chain computes it: BISECT_STEPS bisect_steps."""
    total = sum(sum(c) for c in chunks)
    lo, hi = 1, WEIGHT_MAX
    for _ in range(BISECT_STEPS):
        mid = (lo + hi + 1) >> 1
        lo, hi = bisect_step(lo, hi, [masked_sum(c, mid) for c in chunks], total, top_p_q)
    return lo


def top_p_threshold(weights: list[int], top_p_q: int) -> int:
    """The largest tau in [1, 2^16] with (sum_{w >= tau} w) << 16 >= top_p_q * total
    (total = sum of all weights), by sorting; equals top_p_threshold_bisect."""
    total = sum(weights)
    counts = Counter(w for w in weights if w > 0)
    kept = 0
    for v in sorted(counts, reverse=True):
        kept += v * counts[v]
        if top_p_accepts(kept, total, top_p_q):
            return min(v, WEIGHT_MAX)
    return WEIGHT_MAX if total == 0 else 1


def draw(seed: int, step: int, total: int) -> int:
    """uint256(keccak256(abi_encode(uint256 seed, uint256 step))) % total."""
    from opinfer.semantics.merkle import keccak

    seed, step = int(seed), int(step)
    if total <= 0 or not 0 <= seed < 1 << 256 or not 0 <= step < 1 << 256:
        raise ValueError("draw: total must be positive, seed and step uint256")
    # abi_encode of two uint256 is their two 32-byte big-endian words
    return int.from_bytes(keccak(seed.to_bytes(32, "big") + step.to_bytes(32, "big")), "big") % total


def pick_chunk(chunk_sums: list[int], r: int) -> tuple[int, int]:
    """(j, r - prefix(0..j-1)) for the first chunk j with prefix(0..j) > r."""
    if r < 0:
        raise ValueError("pick_chunk: negative draw")
    prefix = 0
    for j, s in enumerate(chunk_sums):
        if prefix + s > r:
            return j, r - prefix
        prefix += s
    raise ValueError("pick_chunk: draw beyond the total")


def pick_in_chunk(weights: list[int], tau: int, r_rest: int) -> int:
    """The first i with sum_{k <= i, w_k >= tau} w_k > r_rest."""
    prefix = 0
    for i, w in enumerate(weights):
        if w >= tau:
            prefix += w
            if prefix > r_rest:
                return i
    raise ValueError("pick_in_chunk: draw beyond the chunk")


# ---------------------------------------------------------------- penalties and logit bias (before sampling)

PENALTY_BITS = 12         # presence / frequency penalties at 2^-12 of a logit (OpenAI's [-2, 2]: [-8192, 8192])
BIAS_BITS = 8             # logit_bias at 2^-8 of a logit (OpenAI's [-100, 100]: [-25600, 25600])
LOGIT_BITS = 16           # the logits they apply to
PENALTY_SCALE = 1 << (LOGIT_BITS - PENALTY_BITS)
BIAS_SCALE = 1 << (LOGIT_BITS - BIAS_BITS)
LOGIT_RANGE = (-(1 << 31), (1 << 31) - 1)   # penalised logits stay int32, like the LM head's


def penalty(logit: int, count: int, presence: int, frequency: int, bias: int) -> int:
    """OpenAI's rule in integers: logit - (presence [count > 0] + frequency count)
    + bias, penalties at 2^-12 and the bias at 2^-8 brought to the logits' 2^-16
    exactly (multiplied by 16 and 256), clamped to int32."""
    if count < 0:
        raise ValueError("penalty: negative count")
    value = logit - (presence * (1 if count > 0 else 0) + frequency * count) * PENALTY_SCALE + bias * BIAS_SCALE
    return min(max(value, LOGIT_RANGE[0]), LOGIT_RANGE[1])


def penalised_logit(logit: int, token: int, generated: list[int], presence: int, frequency: int,
                    bias_entries: list[tuple[int, int]]) -> int:
    """penalty() of token `token`: count = how often it was generated before
    this step, bias = the sum of the bias entries naming it (a job's entries
    name distinct tokens; the sum makes the rule total)."""
    return penalty(logit, sum(1 for t in generated if t == token), presence, frequency,
                   sum(b for t, b in bias_entries if t == token))


# ---------------------------------------------------------------- the file's own blocks (GGUF Q4_1 / Q8_0)

BLOCK = 32                # weights and activations are blocked by 32 along the inner dimension
BLOCK_ROW_BITS = 15       # activation rows are brought to |xs| <= 2^15 before blocking
BLOCK_ACT_MAX = 127       # blockwise int8 activations in [-127, 127]


def block_quantize(a: list[int]) -> tuple[list[int], list[int], int]:
    """(xq, scales, d) of one activation row: d = max(bit_length(max |a|) - 15, 0),
    xs = (a + 2^(d-1)) >> d (xs = a when d = 0), per block b of 32 the scale
    s_b = max |xs| over the block and xq = round_div(127 xs, s_b) (0 when s_b = 0)."""
    if not a or len(a) % BLOCK:
        raise ValueError("block_quantize: the row's length must be a positive multiple of 32")
    d = max(max(abs(x) for x in a).bit_length() - BLOCK_ROW_BITS, 0)
    half = (1 << (d - 1)) if d > 0 else 0
    xs = [(x + half) >> d for x in a]
    xq, scales = [], []
    for b in range(0, len(xs), BLOCK):
        s = max(abs(x) for x in xs[b:b + BLOCK])
        scales.append(s)
        xq += [round_div(BLOCK_ACT_MAX * x, s) if s else 0 for x in xs[b:b + BLOCK]]
    return xq, scales, d


def block_dense(a: list[int], codes: list[int], dscale: list[int], mscale: list[int] | None,
                mult: int, shift: int, lo: int, hi: int) -> int:
    """One output of a block matrix (GGUF Q4_1: codes 0..15 with D and M per block;
    Q8_0: signed codes, mscale None) times an activation row, all at exact integer
    scales (D, M = the fp16 scale and minimum times 2^24):
    acc = sum_b s_b (D_b sum_i q_i xq_i + M_b sum_i xq_i) over block_quantize(a),
    then requant(acc << d, mult, shift, lo, hi)."""
    if len(codes) != len(a) or len(dscale) * BLOCK != len(a) or (mscale is not None and len(mscale) != len(dscale)):
        raise ValueError("block_dense: a row, its codes and one scale per block of 32")
    xq, scales, d = block_quantize(a)
    acc = 0
    for b, s in enumerate(scales):
        part = slice(b * BLOCK, (b + 1) * BLOCK)
        s1 = sum(q * x for q, x in zip(codes[part], xq[part]))
        s2 = sum(xq[part]) if mscale is not None else 0
        acc += s * (dscale[b] * s1 + (mscale[b] * s2 if mscale is not None else 0))
    return requant(acc << d, mult, shift, lo, hi)


def block_embed(code: int, dscale: int, shift: int, lo: int, hi: int) -> int:
    """One value of a Q8_0 embedding row brought to the residual scale:
    requant(D q, 1, shift, lo, hi) (D at 2^-24, the residual at 2^-(24 - shift))."""
    return requant(dscale * code, 1, shift, lo, hi)
