"""The vectorised engine computes every element by the per-element rules
that StepVerifier re-executes (opinfer/semantics/elements.py)."""

import numpy as np
import pytest

from opinfer.models.minilm.engine import LayerNorm
from opinfer.semantics import elements as el
from opinfer.semantics import quant

RNG = np.random.default_rng(2024)


def test_requant_matches_elementwise_with_negative_ties():
    acc = np.concatenate([RNG.integers(-2**40, 2**40, size=500), np.array([-6, -5, -4, 5, 6, -2**40])])
    mult = RNG.integers(1, 2**20, size=acc.size)
    for shift in (0, 1, 3, 17, 30):
        got = quant.requant(acc, mult, shift, -2**31, 2**31 - 1).tolist()
        assert got == [el.requant(int(a), int(m), shift, -2**31, 2**31 - 1) for a, m in zip(acc, mult)]


def test_dot_rows_match():
    a = RNG.integers(-128, 128, size=(6, 384))
    w = RNG.integers(-127, 128, size=(10, 384))
    bias = RNG.integers(-2**20, 2**20, size=10)
    mult, shift = RNG.integers(1, 2**20, size=10), 31
    acc = quant.exact_matmul(a, w.T, 128, 128) + bias
    got = quant.requant(acc, mult, shift, -128, 127)
    for r in range(6):
        for c in range(10):
            expected = el.dot(a[r].tolist(), w[c].tolist(), int(bias[c]), int(mult[c]), shift, -128, 127)
            assert got[r, c] == expected


def test_layer_norm_rows_match():
    x = RNG.integers(-2**15, 2**15, size=(4, 384))
    x[1] = 7  # a constant row: variance zero, std clamps to 1
    gain = RNG.integers(-2**12, 2**12, size=384)
    beta = RNG.integers(-20, 20, size=384)
    got = LayerNorm(gain, beta, 3)(x)
    for r in range(4):
        row = x[r].tolist()
        assert got[r].tolist() == [el.layer_norm(row, c, int(gain[c]), int(beta[c]), 3, -128, 127) for c in range(384)]


def test_exp_and_softmax_rows_match():
    u = np.concatenate([np.arange(0, 5000), RNG.integers(0, 2**20, size=2000), np.array([2**20])])
    assert quant.exp_neg(u).tolist() == [el.exp_neg(int(v)) for v in u]
    scores = RNG.integers(-2**20, 2**20, size=(3, 57))
    got = quant.softmax_rows(scores, 12345, 18, 32767)
    for r in range(3):
        row = scores[r].tolist()
        assert got[r].tolist() == [el.softmax(row, c, 12345, 18, 32767) for c in range(57)]


def test_l2_normalise_matches():
    row = RNG.integers(-2**30, 2**30, size=384)
    got = quant.l2_normalise(row, 14).tolist()
    assert got == [el.l2_normalise(row.tolist(), c, 14) for c in range(384)]


def test_exact_matmul_batched_and_wide_operands():
    a = RNG.integers(-32768, 32768, size=(3, 5, 2000))
    b = RNG.integers(-128, 128, size=(3, 2000, 7))
    assert np.array_equal(quant.exact_matmul(a, b, 32768, 128), a @ b)
    many = RNG.integers(-32768, 32768, size=(3, 20, 2000))  # the float64 path
    assert np.array_equal(quant.exact_matmul(many, b, 32768, 128), many @ b)
    p = RNG.integers(0, 32768, size=(3, 4, 1500))
    assert np.array_equal(quant.exact_matmul(p, b[:, :1500], 32767, 128), p @ b[:, :1500])


# ---------------------------------------------------------------- SmolLM2 rules and sampling

from opinfer.engine import sampling  # noqa: E402
from opinfer.models.smollm2.engine import SILU_HALF, rms_norm, rope  # noqa: E402
from opinfer.semantics import blocks as bk  # noqa: E402
from opinfer.semantics.ops import DENSE_BLOCK, RUN, JobCtx, Op, dim  # noqa: E402


def _wide_rows(shape, rng=RNG):
    """Rows whose largest magnitudes span 0 to 32 bits."""
    x = np.zeros(shape, dtype=np.int64)
    for r in range(shape[0]):
        bits = int(rng.integers(0, 33))
        x[r] = rng.integers(-(1 << bits) + 1, 1 << bits, size=shape[1]) if bits else 0
    return x


def test_rms_norm_rows_match():
    x = np.concatenate([_wide_rows((12, 576)), np.full((1, 576), -(2**31)), np.zeros((1, 576), dtype=np.int64),
                        np.full((1, 576), 9)])
    gain = RNG.integers(-2**26, 2**26, size=576)
    for eps in (0, 3, 2**30):
        got = rms_norm(x, gain, eps)
        for r in range(x.shape[0]):
            row = x[r].tolist()
            cols = range(576) if r < 3 else RNG.integers(0, 576, size=40).tolist()
            assert [int(got[r, c]) for c in cols] == [
                el.rms_norm(row, c, int(gain[c]), eps, -(2**31), 2**31 - 1) for c in cols]


def _random_blocks(fmt, n, k, rng=RNG):
    nb = k // bk.BLOCK
    if fmt == bk.Q4_1:
        codes, m = rng.integers(0, 16, size=(n, k)).astype(np.uint8), rng.integers(-2**27, 2**27, size=(n, nb))
    else:
        codes, m = rng.integers(-128, 128, size=(n, k)).astype(np.int8), np.zeros((n, nb), dtype=np.int64)
    return bk.QMatrix(fmt, codes, rng.integers(-2**24, 2**24, size=(n, nb)), m)


@pytest.mark.parametrize("fmt", [bk.Q4_1, bk.Q8_0])
def test_block_dense_rows_match_the_element_rule(fmt):
    """blocks.block_dense (the engine's numpy reference) and the program's DENSE_BLOCK
    rule (two column groups, a folded output) against elements.block_dense, on rows
    from zero to 2^40 (row shifts d = 0 to 26), negative ties and empty blocks."""
    k, n = 576, 24
    w = _random_blocks(fmt, n, k)
    x = np.concatenate([_wide_rows((6, k)), np.full((1, k), -(2**40)), np.zeros((1, k), dtype=np.int64)])
    x[1, :64] = 0                                      # two empty blocks
    x[2] = -(2 * RNG.integers(0, 2**14, size=k) + 1) << 4   # odd multiples of 2^(d-1): ties in the row shift
    split, shifts, clamps = 10, (55, 61), ((-(2**31), 2**31 - 1), (-23000, 23000))
    params = [fmt, 0, bk.MULT_127, split, shifts[0], *clamps[0], shifts[1], *clamps[1]]
    slots = [x, w.codes.astype(np.int64), w.D] + ([w.M] if fmt == bk.Q4_1 else [])
    got = RUN[DENSE_BLOCK](Op(DENSE_BLOCK, dim(x.shape[0]), dim(n), (), tuple(params)), slots, JobCtx(1, 0, 10))
    col_shift = np.where(np.arange(n) < split, *shifts)
    lo = np.where(np.arange(n) < split, clamps[0][0], clamps[1][0])
    hi = np.where(np.arange(n) < split, clamps[0][1], clamps[1][1])
    assert np.array_equal(bk.block_dense(x, w, bk.MULT_127, col_shift, lo, hi), got)
    for r in range(x.shape[0]):
        for c in range(n):
            assert got[r, c] == el.block_dense(x[r].tolist(), w.codes[c].astype(int).tolist(), w.D[c].tolist(),
                                               w.M[c].tolist() if fmt == bk.Q4_1 else None, bk.MULT_127,
                                               int(col_shift[c]), int(lo[c]), int(hi[c]))
    folded = RUN[DENSE_BLOCK](Op(DENSE_BLOCK, dim(3), dim(8), (), (fmt, 8, bk.MULT_127, 0, 55, -(2**31), 2**31 - 1)),
                              [x[3:4], *slots[1:]], JobCtx(1, 0, 10))
    assert folded.shape == (3, 8)
    assert folded.reshape(-1).tolist() == bk.block_dense(x[3:4], w, bk.MULT_127, 55, -(2**31), 2**31 - 1)[0].tolist()


def test_block_quantisation_edges():
    """The row shift rounds half up; a block's largest value maps to +-127; ties in
    round_div(127 xs, s) round up; an all-zero block gives zeros."""
    row = [0] * 32 + [-(1 << 15)] + [1 << 14] * 31 + [3] * 31 + [-1] + [(1 << 16) + 1] + [0] * 31
    xq, scales, d = el.block_quantize(row)
    assert d == 2 and scales[0] == 0 and xq[:32] == [0] * 32
    assert xq[32] == -127 and scales[1] == 1 << 13
    assert xq[33] == el.round_div(127 * (1 << 12), 1 << 13) == 64       # 63.5 rounds up
    assert xq[96] == 127 and scales[3] == ((1 << 16) + 1 + 2) >> 2
    npq, a, dd = bk.quantize_rows(np.array([row]))
    assert npq[0].tolist() == xq and a[0].tolist() == scales and int(dd[0, 0]) == d
    with pytest.raises(ValueError):
        el.block_quantize([1] * 33)


def test_fp16_scales_are_exact_integers():
    import gguf  # noqa: F401 - the file's reader; numpy's float16 is the check

    bits = np.arange(0, 1 << 16, dtype=np.uint32)
    finite = ((bits >> 10) & 31) != 31
    bits = bits[finite].astype(np.uint16)
    exact = bits.view(np.float16).astype(np.float64) * (1 << bk.FP16_GRID_BITS)
    assert np.array_equal(bk.fp16_to_grid(bits), exact.astype(np.int64))
    with pytest.raises(ValueError, match="inf or NaN"):
        bk.fp16_to_grid(np.array([0x7C00], dtype=np.uint16))


def test_rope_rows_match():
    T, nh, D = 3, 9, 64
    x = RNG.integers(-127, 128, size=(T, nh, D))
    x[1, 0, :2] = (-1, 0)   # a negative tie with cos = 2^13, sin = 0
    cos = RNG.integers(-2**14, 2**14 + 1, size=(T, D // 2))
    sin = RNG.integers(-2**14, 2**14 + 1, size=(T, D // 2))
    cos[1, 0], sin[1, 0] = 1 << 13, 0
    got = rope(x, cos, sin).reshape(T, nh * D)
    for t in range(T):
        row = x[t].reshape(-1).tolist()
        expected = []
        for c in range(nh * D):
            pair = el.rope_pair(c, D)
            expected.append(el.rope(row, c, D, int(cos[t, pair]), int(sin[t, pair])))
        assert got[t].tolist() == expected
    assert got[1, 0] == 0


def test_silu_table_lookup_and_gate_match():
    table = RNG.integers(-32768, 32768, size=2 * SILU_HALF)
    rows = table.reshape(-1, el.TABLE_WIDTH).tolist()       # on chain: [128, 256]
    gate = np.concatenate([RNG.integers(-SILU_HALF, SILU_HALF, size=300), [-SILU_HALF, SILU_HALF - 1, 0, -1]])
    up = RNG.integers(-32767, 32768, size=gate.size)
    got = table[gate + SILU_HALF] * up                          # smollm2.Session.forward's SwiGLU
    for g, u, v in zip(gate.tolist(), up.tolist(), got.tolist()):
        pos = g + SILU_HALF
        s = el.lookup_2d(rows[pos // el.TABLE_WIDTH], g, SILU_HALF)
        assert s == el.lookup(table.tolist(), g, SILU_HALF)
        assert el.silu_gate(s, u) == v


def test_lookup_reverts_out_of_range():
    import pytest

    with pytest.raises(IndexError):
        el.lookup([1, 2, 3], 3, 0)
    with pytest.raises(IndexError):
        el.lookup([1, 2, 3], -1, 0)
    with pytest.raises(IndexError):
        el.lookup_2d([1] * 10, 10, 0)


def test_greedy_argmax_matches_chunked_rule():
    for vocab in (1, 255, 256, 257, 49152):
        for ties in (False, True):
            logits = RNG.integers(-2**31, 2**31, size=vocab)
            if ties:
                logits[RNG.integers(0, vocab, size=min(vocab, 7))] = logits.max()
            chunks = [logits[j:j + 256].tolist() for j in range(0, vocab, 256)]
            packed = max(el.chunk_argmax(c, 256 * j) for j, c in enumerate(chunks))
            assert el.argmax_token(packed) == int(np.argmax(logits))
            assert el.packed_value(packed) == int(logits.max())
            assert sampling.next_token(logits, sampling.SamplingParams(0), 0) == int(np.argmax(logits))


def test_sampling_next_token_matches_chunked_rules():
    for vocab in (49152, 300):
        for tm, q, seed in ((1000, 65536, 1), (700, 58982, 2), (2000, 1, 3), (1, 30000, 4)):
            logits = RNG.integers(-2**20, 2**20, size=vocab)
            params = sampling.SamplingParams(tm, q, seed)
            assert sampling.next_token(logits, params, 5) == sampling.next_token_by_rules(logits, params, 5)
