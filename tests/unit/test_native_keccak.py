"""The native keccak (opinfer/native/oi_trace.c via opinfer.trace.fasthash) gives the
Python commitments' bits: messages of every padding case, tensor roots (ragged too), Merkle
levels and prefix roots, the V^T cache's roots step by step; on the AVX-512 path and the
scalar one."""

import numpy as np
import pytest

from opinfer.semantics import merkle
from opinfer.semantics.tensor import TensorTree
from opinfer.trace import fasthash as fh


@pytest.fixture(params=[1, 0], ids=["simd", "scalar"])
def simd(request):
    fh.set_simd(request.param)
    yield
    fh.set_simd(1)


def test_keccak_of_every_padding_case(simd):
    rng = np.random.default_rng(1)
    for length in (0, 1, 64, 135, 136, 137, 271, 272, 512):
        data = rng.integers(0, 256, size=9 * length, dtype=np.uint8).tobytes()
        got = fh.keccak_many(data, 9, length)
        assert [bytes(d) for d in got] == [merkle.keccak(data[i * length:(i + 1) * length]) for i in range(9)]


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (3, 33), (9, 1), (9, 300), (5, 7), (192, 20)])
def test_tensor_roots_match_tensor_trees(simd, shape):
    rng = np.random.default_rng(2)
    v = rng.integers(-2**62, 2**62, size=(10, *shape))
    v[0] = rng.integers(-3, 3, size=shape)
    assert [bytes(r) for r in fh.tensor_roots(v)] == [TensorTree.build(t).root for t in v]
    cols = rng.integers(1, shape[1] + 1, size=10)
    assert [bytes(r) for r in fh.tensor_roots(v, cols)] == [TensorTree.build(t[:, :c]).root for t, c in zip(v, cols)]


def test_tensor_roots_refuse_bad_widths():
    with pytest.raises(ValueError):
        fh.tensor_roots(np.zeros((2, 1, 4), dtype=np.int64), cols=[0, 4])


@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 100])
def test_merkle_levels_and_prefix_roots(simd, n):
    rng = np.random.default_rng(n)
    leaves = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    as_bytes = [bytes(x) for x in leaves]
    levels = fh.merkle_levels(leaves)
    assert bytes(levels[-1][0]) == merkle.root(as_bytes)
    for m in range(1, n + 1):
        assert fh.prefix_root(levels, m) == merkle.root(as_bytes[:m])
    ms = list(range(1, n + 1))
    assert [bytes(r) for r in fh.prefix_roots(levels, ms)] == [merkle.root(as_bytes[:m]) for m in ms]


def test_vt_roots_step_by_step(simd):
    rng = np.random.default_rng(3)
    for rows, cols in ((1, 1), (4, 17), (12, 70)):
        vt = rng.integers(-30000, 30000, size=(rows, cols))
        ms = list(range(1, cols + 1))
        assert [bytes(r) for r in fh.vt_roots(vt, ms)] == [TensorTree.build(vt[:, :m]).root for m in ms]
