"""Shared test vectors: random and edge-case instances of every element rule,
with the values the Python rules give. tests/contracts/test_shared_vectors.py
has the ElementRules contract compute the same instances; they must agree bit
for bit. An expected value of REVERT means the Python rule raises, so the
contract must revert too."""

from __future__ import annotations

import random

from opinfer.semantics import elements as el

INT8, INT16, INT32 = (-128, 127), (-32768, 32767), (-(2**31), 2**31 - 1)
RANGES = (INT8, INT16, INT32)


def _row(rng: random.Random, n: int, bound: int) -> list[int]:
    return [rng.randint(-bound, bound) for _ in range(n)]


def requant_cases(rng: random.Random, n: int):
    for i in range(n):
        shift = rng.choice([0, 1, 2, 7, 15, 20, 31, 40])
        mult = rng.randint(1, 2**20)
        acc = rng.randint(-2**40, 2**40)
        if shift and i % 4 == 0:  # an exact negative (or positive) tie
            acc = -((1 << (shift - 1)) * rng.choice([1, 3, 5])) if i % 8 == 0 else (1 << (shift - 1))
            mult = 1
        lo, hi = rng.choice(RANGES)
        yield (acc, mult, shift, lo, hi), el.requant(acc, mult, shift, lo, hi)


def dot_cases(rng: random.Random, n: int):
    lengths = [1536, 576, 384, 1] + [rng.randint(1, 64) for _ in range(n - 4)]
    for k in lengths:
        a, w = _row(rng, k, 128), _row(rng, k, 127)
        if k == 1536:
            a, w = [-128] * k, [-127] * k  # the largest accumulator of these widths: saturates
        bias, mult, shift = rng.randint(-2**20, 2**20), rng.randint(1, 2**20), rng.randint(0, 40)
        lo, hi = rng.choice(RANGES)
        yield (a, w, bias, mult, shift, lo, hi), el.dot(a, w, bias, mult, shift, lo, hi)


def layer_norm_cases(rng: random.Random, n: int):
    lengths = [576, 384, 1, 2] + [rng.randint(1, 64) for _ in range(n - 4)]
    for i, k in enumerate(lengths):
        row = _row(rng, k, 2**15) if i != 3 else [9, 9]  # a constant row: std clamps to 1
        col = rng.randrange(k)
        gain, beta, eps = rng.randint(-2**12, 2**12), rng.randint(-30, 30), rng.randint(0, 10)
        yield (row, col, gain, beta, eps, -128, 127), el.layer_norm(row, col, gain, beta, eps, -128, 127)


def exp_cases(rng: random.Random, n: int):
    edges = [0, 1, 255, 256, 177, 2**20, 32 * 177 - 1, 32 * 177, 32 * 177 + 1]
    for u in edges + [rng.randint(0, 2**20) for _ in range(n - len(edges))]:
        yield (u,), el.exp_neg(u)


def softmax_cases(rng: random.Random, n: int):
    lengths = [256, 1, 128] + [rng.randint(1, 64) for _ in range(n - 3)]
    for k in lengths:
        row = _row(rng, k, 2**20)
        col = rng.randrange(k)
        mult, shift = rng.randint(1, 2**20), rng.randint(10, 30)
        yield (row, col, mult, shift, 32767), el.softmax(row, col, mult, shift, 32767)


def exp_sum_cases(rng: random.Random, n: int):
    """Chunks of a long scores row: full (256), short (a row's last chunk), empty
    (a chunk past the row), one value above top (reverts)."""
    lengths = [256, 0, 1, 255] + [rng.randint(1, 256) for _ in range(n - 4)]
    for i, k in enumerate(lengths):
        values = _row(rng, k, 2**30)
        top = max(values + [0]) + rng.choice([0, 0, 1, 2**20])
        if i % 50 == 49 and values:
            values[rng.randrange(k)] = top + 1
        mult, shift = rng.choice([1, rng.randint(1, 2**20)]), rng.randint(0, 30)
        yield (values, top, mult, shift), _expect(el.exp_sum, values, top, mult, shift)


def softmax_prob_cases(rng: random.Random, n: int):
    """Elements of a long row's softmax from its maximum and chunk sums; the
    first ones are whole rows checked against elements.softmax."""
    for i in range(n):
        k = rng.choice([1, 300, 4096]) if i < 6 else rng.randint(1, 64)
        row = _row(rng, k, 2**20)
        col, top = rng.randrange(k), max(row)
        mult, shift = rng.randint(1, 2**20), rng.randint(10, 30)
        total = sum(el.exp_sum(row[j:j + el.CHUNK_WIDTH], top, mult, shift) for j in range(0, k, el.CHUNK_WIDTH))
        if i < 6:
            assert el.softmax_prob(row[col], top, total, mult, shift, 32767) == el.softmax(row, col, mult, shift, 32767)
        value = row[col] if i % 40 != 39 else top + 1
        if i % 40 == 19:
            total = 0
        yield (value, top, total, mult, shift, 32767), _expect(el.softmax_prob, value, top, total, mult, shift, 32767)


def residual_cases(rng: random.Random, n: int):
    for _ in range(n):
        a, x = rng.randint(-2**31, 2**31), rng.randint(-128, 127)
        ma, sa, mx, sx = rng.randint(1, 2**20), rng.randint(0, 30), rng.randint(1, 2**20), rng.randint(0, 30)
        yield (a, x, ma, sa, mx, sx, *INT32), el.residual(a, x, ma, sa, mx, sx, *INT32)


def l2_cases(rng: random.Random, n: int):
    lengths = [384, 1] + [rng.randint(1, 64) for _ in range(n - 2)]
    for i, k in enumerate(lengths):
        row = _row(rng, k, 2**30) if i != 1 else [0]  # a zero row: the norm clamps to 1
        col = rng.randrange(k)
        yield (row, col, 14), el.l2_normalise(row, col, 14)


REVERT = None
CHUNK = el.CHUNK_WIDTH
# Rows of chunks sums and samples: up to 192 chunks (a 49,152-entry row). The rules are
# model-free (any vocabulary below 2^INDEX_BITS, el.INDEX_BITS); the count only sizes the
# instances, and a change would change every vector after it (the contracts test pins them).
N_CHUNKS = 192


def _expect(fn, *args):
    try:
        return fn(*args)
    except (ValueError, IndexError):
        return REVERT


def _bits_row(rng: random.Random, n: int, bits: int) -> list[int]:
    """A row whose largest magnitude has exactly `bits` bits (0: all zero)."""
    if bits == 0:
        return [0] * n
    row = _row(rng, n, (1 << bits) - 1)
    row[rng.randrange(n)] = rng.choice([-1, 1]) * rng.randint(1 << (bits - 1), (1 << bits) - 1)
    return row


def block_dense_cases(rng: random.Random, n: int):
    """Q4_1 and Q8_0 rows of a small model's hidden and MLP widths (576 and 1,536) and short ones; inputs
    from zero to 2^40 (row shifts up to 26), empty blocks, negative ties in the row shift
    and in round_div(127 xs, s), saturating outputs, scales at the int32 edge, reverts."""
    outs = [(-23000, 23000), (-(2**14), 2**14 - 1), INT32, (-127, 127)]
    for i in range(n):
        k = [1536, 576, 576, 1536, 32, 64][i] if i < 6 else rng.choice([32, 64, 96, 576, 1536] + [32 * rng.randint(1, 8)] * 3)
        q4 = i % 3 != 2
        nb = k // 32
        bits = rng.choice([0, 3, 7, 15, 16, 17, 24, 31, 40])
        a = _bits_row(rng, k, bits)
        codes = _row_in(rng, k, 0, 15) if q4 else _row_in(rng, k, -128, 127)
        dscale = [rng.randint(-2**24, 2**24) for _ in range(nb)]
        mscale = [rng.randint(-2**27, 2**27) for _ in range(nb)] if q4 else []
        mult, shift = rng.choice([8454660, rng.randint(1, 2**23)]), rng.randint(30, 70)
        lo, hi = rng.choice(outs)
        if i == 0:      # the down projection's widest input, all equal, saturating at int32
            a, codes, dscale, mscale, shift = [2**40] * k, [15] * k, [2**24] * nb, [2**27] * nb, 40
            lo, hi = INT32
        elif i == 3:    # negative ties in the row shift: odd multiples of 2^(d-1)
            a = [-(2 * rng.randint(0, 2**14) + 1) << 5 for _ in range(k)]
        elif i == 4:    # a block whose values tie in round_div(127 xs, s): xs = s / 2
            a = [64] + [32] * 31
        elif i == 5:    # one empty block, one at the scales' int32 edge
            a = [0] * 32 + _bits_row(rng, 32, 15)
            dscale, mscale = [2**31 - 1, -(2**31)], [-(2**31), 2**31 - 1]
        m_arg = mscale if q4 else []
        if i % 50 == 49:    # rows of different lengths, a row not a multiple of 32, too few scales: revert
            kind = (i // 50) % 3
            if kind == 0:
                codes = codes[:-1]
            elif kind == 1:
                a, codes = a[:-5], codes[:-5]
            else:
                dscale = dscale[:-1]
            yield (a, codes, dscale, m_arg, mult, shift, lo, hi), REVERT
            continue
        yield (a, codes, dscale, m_arg, mult, shift, lo, hi), el.block_dense(a, codes, dscale, m_arg if q4 else None,
                                                                             mult, shift, lo, hi)


def _row_in(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def rms_norm_cases(rng: random.Random, n: int):
    for i in range(n):
        k = [576, 576, 576, 576, 1, 2][i] if i < 6 else rng.choice([576, 1, 2, 3] + [rng.randint(1, 64)] * 4)
        bits = rng.choice([0, 1, 10, 25, 26, 27, 31, 32, 40])
        row = _bits_row(rng, k, bits)
        gain, eps = rng.randint(-2**16, 2**16), rng.choice([0, 1, rng.randint(0, 2**20), rng.randint(0, 2**40)])
        lo, hi = INT16
        if i == 0:      # all-equal row at the int32 limit: d = 6
            row = [-(2**31)] * k
        elif i == 1:    # zero row: ms = eps >> 2d, rms clamps to 1 when eps is 0
            row, eps = [0] * k, 0
        elif i == 2:    # saturation
            gain, eps = 2**16, 0
        elif i == 5:    # a constant two-element row
            row = [9, 9]
        col = rng.randrange(k)
        if i == 3:      # a negative tie in round_div: x * gain = -rms * 2^7 with rms = 1
            row, col, gain, eps = [0] * (k - 1) + [-1], k - 1, 128, 0
        yield (row, col, gain, eps, lo, hi), el.rms_norm(row, col, gain, eps, lo, hi)


def rope_cases(rng: random.Random, n: int):
    for i in range(n):
        head_dim = 64 if i % 4 else rng.choice([2, 4, 8, 64])
        k = head_dim * ([9, 3, 1][i] if i < 3 else rng.choice([1, 2, 3, 9]))
        bound = rng.choice([127, 2**15, 2**31])
        row = _row(rng, k, bound)
        col = rng.randrange(k)
        cos, sin = rng.randint(-2**14, 2**14), rng.randint(-2**14, 2**14)
        if i == 3:  # exact negative tie: a cos = -2^13
            row, col, cos, sin = [-1] * k, 0, 1 << 13, 0
        elif i == 4:
            row, cos, sin = [127] * k, 1 << 14, 0
        yield (row, col, head_dim, cos, sin), el.rope(row, col, head_dim, cos, sin)


def rope_pair_cases(rng: random.Random, n: int):
    for i in range(n):
        head_dim = rng.choice([2, 64, 64, 128])
        col = rng.randrange(head_dim * 9) if i else 575
        yield (col, head_dim), el.rope_pair(col, head_dim)


def silu_gate_cases(rng: random.Random, n: int):
    edges = [(-32768, -32767), (32767, 32767), (0, 5), (-1, 1)]
    for i in range(n):
        t, u = edges[i] if i < len(edges) else (rng.randint(*INT16), rng.randint(-32767, 32767))
        yield (t, u), el.silu_gate(t, u)


def _silu_like_table(rng: random.Random, size: int) -> list[int]:
    return [rng.randint(*INT16) for _ in range(size)]


def lookup_cases(rng: random.Random, n: int):
    for i in range(n):
        size = 256 if i % 3 else rng.randint(1, 256)
        table = _silu_like_table(rng, size)
        offset = rng.choice([0, 128, 2048, -5])
        pos = [0, size - 1, size, -1][i] if i < 4 else rng.randrange(size)
        if i % 50 == 7:
            pos = rng.choice([size, size + 1000, -1, -2048])   # out of range: both revert
        index = pos - offset
        yield (table, index, offset), _expect(el.lookup, table, index, offset)


def lookup_2d_cases(rng: random.Random, n: int):
    table = _silu_like_table(rng, 4096)                       # stored as [16, 256]
    for i in range(n):
        width = 256 if i % 4 else rng.choice([1, 16, 128, 256])
        offset = 2048 if i % 5 else rng.choice([0, 7])
        pos = [0, 255, 256, 4095][i] if i < 4 else rng.randrange(4096)
        if i % 50 == 9:
            pos = rng.choice([-1, -2049])
        index = pos - offset
        row = table[(pos // width) * width:(pos // width + 1) * width] if pos >= 0 else table[:width]
        if i % 50 == 11:
            row = row[: rng.randint(0, width - 1)] if width > 1 else []  # a short row: may revert
        yield (row, index, offset, width), _expect(el.lookup_2d, row, index, offset, width)


def _logit_chunk(rng: random.Random, size: int, kind: int) -> list[int]:
    if kind == 0:
        return [rng.randint(-2**31, 2**31 - 1) for _ in range(size)]
    if kind == 1:    # few distinct values: many ties
        pool = [rng.randint(-2**20, 2**20) for _ in range(3)]
        return [rng.choice(pool) for _ in range(size)]
    if kind == 2:    # all equal (negative)
        return [-rng.randint(1, 2**31)] * size
    return [rng.randint(-2**21, 2**21) for _ in range(size)]


def chunk_argmax_cases(rng: random.Random, n: int):
    for i in range(n):
        j = [0, N_CHUNKS - 1][i] if i < 2 else rng.randrange(N_CHUNKS)
        size = CHUNK if i % 7 else rng.randint(1, CHUNK)
        base = j * CHUNK if i % 11 else (1 << el.INDEX_BITS) - size
        values = _logit_chunk(rng, size, i % 4)
        yield (values, base), el.chunk_argmax(values, base)


def _packs(rng: random.Random, n: int):
    for i in range(n):
        size = rng.randint(1, CHUNK)
        base = rng.randrange((1 << el.INDEX_BITS) - size + 1)
        yield el.chunk_argmax(_logit_chunk(rng, size, i % 4), base)


def argmax_token_cases(rng: random.Random, n: int):
    for p in _packs(rng, n):
        yield (p,), el.argmax_token(p)


def packed_value_cases(rng: random.Random, n: int):
    for p in _packs(rng, n):
        yield (p,), el.packed_value(p)


TEMPERATURES = [1, 2000, 1000, 700, 1]


def sample_weight_cases(rng: random.Random, n: int):
    for i in range(n):
        tm = TEMPERATURES[i] if i < len(TEMPERATURES) else rng.choice([1, 2000, rng.randint(1, 2000)])
        top = rng.randint(-2**31, 2**31)
        delta = rng.choice([0, 1, 127, 128, rng.randint(0, 2**16), rng.randint(0, 2**22), rng.randint(0, 2**33),
                            1 << 40])
        if i == 2:   # a round_div tie: 2 * delta * 1000 = odd multiple of tm << 8
            delta = 128
        logit = top - delta
        if i % 60 == 59:
            logit = top + 1                                   # above top: both revert
        yield (logit, top, tm), _expect(el.sample_weight, logit, top, tm)


def _weight_chunk(rng: random.Random, size: int = CHUNK, kind: int | None = None) -> list[int]:
    kind = rng.randrange(5) if kind is None else kind
    if kind == 0:
        return [el.WEIGHT_MAX] * size
    if kind == 1:
        return [0] * size
    if kind == 2:    # few distinct weights: ties at the threshold
        pool = [rng.randint(0, el.WEIGHT_MAX) for _ in range(3)]
        return [rng.choice(pool) for _ in range(size)]
    tm = rng.choice([1, 2000, rng.randint(1, 2000)])
    top = rng.randint(-2**20, 2**20)
    return [el.sample_weight(top - rng.randint(0, 2**rng.choice([12, 18, 22])), top, tm) for _ in range(size)]


def masked_sum_cases(rng: random.Random, n: int):
    for i in range(n):
        weights = _weight_chunk(rng, CHUNK if i % 9 else rng.randint(0, CHUNK))
        tau = rng.choice([1, el.WEIGHT_MAX, el.WEIGHT_MAX + 1, rng.randint(1, el.WEIGHT_MAX)]
                         + ([rng.choice(weights)] * 2 if weights else []))
        yield (weights, tau), el.masked_sum(weights, tau)


def _chunk_sums(rng: random.Random, count: int = N_CHUNKS) -> list[int]:
    cap = CHUNK * el.WEIGHT_MAX
    kind = rng.randrange(4)
    if kind == 0:
        return [rng.randint(0, cap) for _ in range(count)]
    if kind == 1:    # most chunks empty
        return [rng.randint(0, cap) if rng.random() < 0.05 else 0 for _ in range(count)]
    if kind == 2:
        return [cap] * count
    return [rng.choice([0, rng.randint(0, 2**16)]) for _ in range(count)]


def bisect_step_cases(rng: random.Random, n: int):
    for i in range(n):
        sums = _chunk_sums(rng, N_CHUNKS if i % 5 else rng.randint(0, N_CHUNKS))
        kept = sum(sums)
        q = [1, el.TOP_P_ONE][i % 2] if i % 3 == 0 else rng.randint(1, el.TOP_P_ONE)
        total = kept + rng.choice([0, rng.randint(0, kept + 1), rng.randint(0, 2**32)])
        if i % 7 == 3:   # an exact tie: (kept << 16) == q * total
            total = kept
            q = el.TOP_P_ONE
        lo = rng.choice([1, rng.randint(1, el.WEIGHT_MAX)])
        hi = rng.choice([el.WEIGHT_MAX, rng.randint(lo, el.WEIGHT_MAX), lo, max(lo - 1, 1)])
        yield (lo, hi, sums, total, q), el.bisect_step(lo, hi, sums, total, q)


def draw_cases(rng: random.Random, n: int):
    edges = [(0, 0, 1), (2**64 - 1, 2**32, 2**255 - 1), (2**256 - 1, 2**256 - 1, 3), (1, 0, 0)]
    for i in range(n):
        if i < len(edges):
            seed, step, total = edges[i]
        else:
            seed, step = rng.randrange(2**64), rng.randrange(2**20)
            total = rng.choice([1, 2, rng.randint(1, N_CHUNKS * CHUNK * el.WEIGHT_MAX), rng.randint(1, 2**250)])
        yield (seed, step, total), _expect(el.draw, seed, step, total)


def pick_chunk_cases(rng: random.Random, n: int):
    for i in range(n):
        sums = _chunk_sums(rng, N_CHUNKS if i % 5 else rng.randint(1, N_CHUNKS))
        if sum(sums) == 0:
            sums[rng.randrange(len(sums))] = rng.randint(1, 2**16)
        total = sum(sums)
        prefixes = [sum(sums[:j]) for j in range(1, len(sums)) if sums[j - 1]]
        r = rng.choice([0, total - 1, rng.randrange(total)] + rng.sample(prefixes, min(2, len(prefixes))))
        if i % 40 == 39:
            r = rng.choice([total, -1])                        # beyond the total: both revert
        yield (sums, r), _expect(el.pick_chunk, sums, r)


def pick_in_chunk_cases(rng: random.Random, n: int):
    for i in range(n):
        weights = _weight_chunk(rng, CHUNK if i % 9 else rng.randint(1, CHUNK), kind=None if i % 5 else 2)
        tau = rng.choice([1, rng.choice(weights), rng.randint(1, el.WEIGHT_MAX)])
        kept = el.masked_sum(weights, tau)
        if kept == 0:
            tau, kept = 1, el.masked_sum(weights, 1)
        if kept == 0:
            weights[rng.randrange(len(weights))], kept = tau, tau
        prefixes, acc = [], 0
        for w in weights:
            if w >= tau:
                acc += w
                prefixes.append(acc)
        r = rng.choice([0, kept - 1, rng.randrange(kept), rng.choice(prefixes) % kept])
        if i % 40 == 39:
            r = kept                                           # beyond the chunk: both revert
        yield (weights, tau, r), _expect(el.pick_in_chunk, weights, tau, r)


def penalty_cases(rng: random.Random, n: int):
    """Logits across int32 (and the clamp's edges), counts 0, 1 and up to a
    4,096-token generation, every int16 penalty and bias (OpenAI's edges
    +-8,192 and +-25,600 among them), biases summed over duplicate entries."""
    for i in range(n):
        logit = rng.choice([rng.randint(-2**21, 2**21)] * 3 + [rng.randint(-2**31, 2**31 - 1), -2**31, 2**31 - 1, 0])
        count = rng.choice([0, 0, 1, 2, rng.randint(0, 4096), 65535])
        presence = rng.choice([0, 8192, -8192, rng.randint(-8192, 8192), rng.randint(-2**15, 2**15 - 1)])
        frequency = rng.choice([0, 8192, -8192, rng.randint(-8192, 8192), rng.randint(-2**15, 2**15 - 1)])
        bias = rng.choice([0, 25600, -25600, rng.randint(-25600, 25600), rng.randint(-1000 * 2**15, 1000 * 2**15)])
        if i % 25 == 0:   # pushed past the clamp from the top edge
            logit, presence, frequency, bias = 2**31 - 1, -2**15, -2**15, 2**15 - 1
        yield (logit, count, presence, frequency, bias), el.penalty(logit, count, presence, frequency, bias)


# contract function name -> case generator
CASES = {
    "elem_requant": requant_cases,
    "elem_dot": dot_cases,
    "elem_layer_norm": layer_norm_cases,
    "elem_exp_neg": exp_cases,
    "elem_softmax": softmax_cases,
    "elem_exp_sum": exp_sum_cases,
    "elem_softmax_prob": softmax_prob_cases,
    "elem_residual": residual_cases,
    "elem_l2_normalise": l2_cases,
    "elem_block_dense": block_dense_cases,
    "elem_rms_norm": rms_norm_cases,
    "elem_rope": rope_cases,
    "elem_rope_pair": rope_pair_cases,
    "elem_silu_gate": silu_gate_cases,
    "elem_lookup": lookup_cases,
    "elem_lookup_2d": lookup_2d_cases,
    "elem_chunk_argmax": chunk_argmax_cases,
    "elem_argmax_token": argmax_token_cases,
    "elem_packed_value": packed_value_cases,
    "elem_sample_weight": sample_weight_cases,
    "elem_masked_sum": masked_sum_cases,
    "elem_bisect_step": bisect_step_cases,
    "elem_draw": draw_cases,
    "elem_pick_chunk": pick_chunk_cases,
    "elem_pick_in_chunk": pick_in_chunk_cases,
    "elem_penalty": penalty_cases,
}


def cases(name: str, n: int = 200, seed: int = 7):
    return list(CASES[name](random.Random(f"{name}-{seed}"), n))
