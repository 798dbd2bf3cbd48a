"""The GGUF's own blocks as exact integers, and the native kernels against the
numpy reference and the element rule (elements.block_dense), bit for bit."""

import numpy as np
import pytest

from opinfer import native
from opinfer.engine.native_dense import NativeDense
from opinfer.semantics import blocks as bk
from opinfer.semantics import elements as el

RNG = np.random.default_rng(11)


def _random(fmt, n, k):
    nb = k // bk.BLOCK
    if fmt == bk.Q4_1:
        codes, m = RNG.integers(0, 16, size=(n, k)).astype(np.uint8), RNG.integers(-2**27, 2**27, size=(n, nb))
    else:
        codes, m = RNG.integers(-128, 128, size=(n, k)).astype(np.int8), np.zeros((n, nb), dtype=np.int64)
    return bk.QMatrix(fmt, codes, RNG.integers(-2**24, 2**24, size=(n, nb)), m)


def _rows(t, k):
    x = RNG.integers(-2**40, 2**40, size=(t, k)) >> RNG.integers(0, 41, size=(t, 1))
    x[0] = 0
    x[1, :64] = 0                                    # empty blocks
    x[2, 3] = -(2**40)
    x[3] = -(2 * RNG.integers(0, 2**14, size=k) + 1) << 6    # ties in the row shift
    return x


@pytest.mark.parametrize("fmt", [bk.Q4_1, bk.Q8_0])
def test_native_dense_equals_numpy_and_the_element_rule(fmt):
    """Threads 1-4, AVX-512 VNNI, AVX-VNNI, AVX2 and scalar, 16-, 8- and 4-row groups and leftover rows (n = 43),
    more activation rows than one pass takes (11 > TMAX = 8)."""
    w = _random(fmt, 43, 576)
    x = _rows(11, 576)
    shift = RNG.integers(40, 70, size=43)
    dense = NativeDense.of(w, bk.MULT_127, shift, -(2**31), 2**31 - 1)
    ref = dense.reference(x)
    before = native.lib().oi_get_threads()
    try:
        for simd in (3, 2, 1, 0):                   # AVX-512 VNNI, AVX-VNNI, AVX2, scalar (where the CPU has them)
            native.set_simd(simd)
            for threads in (1, 2, 3, 4):
                native.set_threads(threads)
                assert np.array_equal(dense(x), ref), (simd, threads)
    finally:
        native.set_simd()
        native.set_threads(before)
    acc, xq, a, d = dense.acc(x)
    nxq, na, nd = bk.quantize_rows(x)
    assert np.array_equal(xq, nxq) and np.array_equal(a, na) and np.array_equal(d, nd[:, 0])
    assert np.array_equal(acc, bk.block_acc(nxq, na, w))
    for r in range(x.shape[0]):
        for c in range(0, 43, 5):
            assert ref[r, c] == el.block_dense(x[r].tolist(), w.codes[c].astype(int).tolist(), w.D[c].tolist(),
                                               w.M[c].tolist() if fmt == bk.Q4_1 else None, bk.MULT_127,
                                               int(shift[c]), -(2**31), 2**31 - 1)


def test_real_blocks_are_the_files_weights():
    """The GGUF's Q4_1 and Q8_0 tensors as integers equal the gguf package's dequantisation
    exactly (times 2^24), and the native products over them equal the numpy reference."""
    import gguf

    from opinfer.models.smollm2.gguf import _reader, find_gguf_path

    tensors = {t.name: t for t in _reader(str(find_gguf_path())).tensors}
    for name in ("blk.0.ffn_down.weight", "token_embd.weight"):
        t = tensors[name]
        k, n = (int(v) for v in t.shape[:2])
        rows = slice(0, 96)
        w = bk.from_gguf(t.data, t.tensor_type.name, n, k).rows(rows)
        expected = gguf.quants.dequantize(t.data, t.tensor_type)[rows].astype(np.float64)
        assert np.array_equal(w.dequantize(), expected)
        x = _rows(4, k) >> 10
        dense = NativeDense.of(w, bk.MULT_127, 60, -(2**31), 2**31 - 1)
        assert np.array_equal(dense(x), dense.reference(x))


def test_bounds_are_checked_when_a_matrix_is_made():
    codes = np.full((1, 32), 15, dtype=np.uint8)
    with pytest.raises(ValueError, match="int32"):
        bk.QMatrix(bk.Q4_1, codes, np.array([[1 << 31]]), np.zeros((1, 1), dtype=np.int64))
    wide = np.full((1, 2048), 15, dtype=np.uint8)
    with pytest.raises(ValueError, match="int64"):
        bk.QMatrix(bk.Q4_1, wide, np.full((1, 64), 2**30), np.full((1, 64), 2**30))
    with pytest.raises(ValueError, match="multiple of 32"):
        bk.QMatrix(bk.Q4_1, codes[:, :16], np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1), dtype=np.int64))


def _levels(check):
    """check() at every SIMD level (AVX-512 VNNI, AVX-VNNI, AVX2, scalar, where the CPU has them), threads 1 and 2."""
    before = native.lib().oi_get_threads()
    try:
        for simd in (3, 2, 1, 0):
            native.set_simd(simd)
            for threads in (1, 2):
                native.set_threads(threads)
                check(simd, threads)
    finally:
        native.set_simd()
        native.set_threads(before)


@pytest.mark.parametrize("fmt", [bk.Q4_1, bk.Q8_0])
def test_native_dense_at_the_accumulator_bound(fmt):
    """The 16-row kernels' products at the extremes the load-time bound admits (Q8_0: S1 D up to
    2^50 times a = 2^15 by vpmullq; Q4_1: a S1 near 2^31 and M a S2 near the bound), 32 weight rows
    (two 16-row groups) against 9 activation rows (a full TMAX pass and one more), every level."""
    n, k = 32, 64
    nb = k // bk.BLOCK
    sign = np.where(RNG.integers(0, 2, size=(n, nb)) == 1, 1, -1)
    if fmt == bk.Q8_0:
        codes = np.where(RNG.integers(0, 2, size=(n, k)) == 1, 127, -128).astype(np.int8)
        dmax = (bk.ACC_LIMIT - 1) // ((bk.ACT_MAX << bk.ROW_BITS) * k * 128)
        w = bk.QMatrix(fmt, codes, sign * dmax, np.zeros((n, nb), dtype=np.int64))
    else:
        codes = np.where(RNG.integers(0, 2, size=(n, k)) == 1, 15, 0).astype(np.uint8)
        dmax = (bk.ACC_LIMIT - 1) // ((bk.ACT_MAX << bk.ROW_BITS) * k * 16)
        w = bk.QMatrix(fmt, codes, sign * dmax, -sign * dmax)
    x = np.where(RNG.integers(0, 2, size=(9, k)) == 1, 2**15 - 1, -(2**15) + 1).astype(np.int64)
    x[1] = 2**15 - 1                                 # every xq = 127
    x[2] = np.where(np.arange(k) % 2 == 0, 2**16 - 1, -(2**16) + 1)   # d = 1, a = 2^15
    dense = NativeDense.of(w, bk.MULT_127, 62, -(2**62), 2**62)
    ref = dense.reference(x)
    expected = bk.block_acc(*bk.quantize_rows(x)[:2], w)
    assert np.abs(expected).max() > 2**60                          # near the bound indeed

    def check(simd, threads):
        assert np.array_equal(dense(x), ref), (simd, threads)
        assert np.array_equal(dense.acc(x)[0], expected), (simd, threads)
    _levels(check)


def test_native_activation_quantisation_every_scale():
    """The blockwise int8 activations (the AVX-512 path's float reciprocal, corrected both ways)
    against numpy: every block scale a from 1 to 64 with every value |xs| <= a, 300 random scales
    up to 2^15 with random values, and a = 2^15 (a row shifted by d = 1)."""
    blocks = []
    for amax in range(1, 65):
        vals = np.arange(-amax, amax + 1)
        for i in range(0, len(vals), 31):
            blocks.append(np.concatenate([[amax], vals[i:i + 31], np.zeros(31 - len(vals[i:i + 31]), int)]))
    for amax in RNG.integers(65, 2**15, size=300).tolist() + [2**15 - 1]:
        blocks.append(np.concatenate([[-amax], RNG.integers(-amax, amax + 1, size=31)]))
    blocks = np.array(blocks, dtype=np.int64)
    blocks = np.concatenate([blocks, np.zeros(((-len(blocks)) % 18, 32), dtype=np.int64)])
    x = blocks.reshape(-1, 18 * 32)                   # rows of 576, 18 blocks each, d = 0
    x = np.concatenate([x, 2 * x[:3] - 1])            # d = 1: xs = x >> 1 rounded, up to 2^15
    w = bk.QMatrix(bk.Q8_0, np.ones((16, 576), dtype=np.int8), np.ones((16, 18), dtype=np.int64),
                   np.zeros((16, 18), dtype=np.int64))
    dense = NativeDense.of(w, bk.MULT_127, 60, -(2**31), 2**31 - 1)
    nxq, na, nd = bk.quantize_rows(x)

    def check(simd, threads):
        _, xq, a, d = dense.acc(x)
        assert np.array_equal(xq, nxq) and np.array_equal(a, na) and np.array_equal(d, nd[:, 0]), (simd, threads)
    _levels(check)


def test_native_rms_norm_equals_numpy():
    """oi_rms_norm (AVX-512 at level 3: a corrected double quotient; rows whose numerators reach
    2^52 and rows of a width not a multiple of 8 take the scalar rule) against the numpy rule."""
    from opinfer.models.llama.engine import rms_norm

    rows = [RNG.integers(-(1 << b), 1 << b, size=576) for b in (1, 8, 20, 31, 34)]
    rows += [np.full(576, -(2**31)), np.zeros(576, dtype=np.int64), np.full(576, 9)]
    x = np.array(rows, dtype=np.int64)
    gains = [RNG.integers(-2**16, 2**16, size=576), RNG.integers(-2**26, 2**26, size=576)]
    for gain in gains:
        for eps in (0, 3, 2**30):
            for width in (576, 100):
                xs, g = np.ascontiguousarray(x[:, :width]), np.ascontiguousarray(gain[:width])
                ref = rms_norm(xs, g, eps)

                def check(simd, threads, xs=xs, g=g, eps=eps, ref=ref):
                    y = np.empty_like(xs)
                    native.lib().oi_rms_norm(xs.ctypes.data, xs.shape[0], xs.shape[1], g.ctypes.data, eps,
                                             -(2**31), 2**31 - 1, y.ctypes.data)
                    assert np.array_equal(y, ref), (simd, eps, xs.shape)
                _levels(check)


def test_native_rms_norm_on_integer_quotients():
    """RMSNorm outputs whose quotient x g / den is an exact integer or one step from one (where a
    floored double quotient can be one below: the AVX-512 path's check each way), over 40 rows of
    different RMS: x powers of two up to 2^7 so that x g = (2 q - 1) den / 2 + {-x, 0, x} is reachable."""
    from opinfer.models.llama.engine import NORM_BITS, SQUARE_BITS, isqrt, rms_norm, round_div

    for _ in range(40):
        x = (RNG.choice([-1, 1], size=576) << RNG.integers(0, int(RNG.integers(1, 8)), size=576)).astype(np.int64)
        d = max(int(bk.bit_length(np.abs(x).max())) - SQUARE_BITS, 0)
        rms = max(int(isqrt(np.array(round_div(int(((x >> d) ** 2).sum()), 576)))), 1)
        q = RNG.integers(-2**12, 2**12, size=576)
        gain = (2 * q - 1) * (rms << (NORM_BITS + d - 1)) // x + RNG.integers(-1, 2, size=576)
        ref = rms_norm(x[None, :], gain, 0)

        def check(simd, threads, x=x, gain=gain, ref=ref):
            y = np.empty((1, 576), dtype=np.int64)
            native.lib().oi_rms_norm(x.ctypes.data, 1, 576, gain.ctypes.data, 0, -(2**31), 2**31 - 1, y.ctypes.data)
            assert np.array_equal(y, ref), simd
        _levels(check)
