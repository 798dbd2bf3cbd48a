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
