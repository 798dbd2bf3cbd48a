"""The vectorised engine computes every element by the per-element rules
that StepVerifier re-executes (opinfer/engine/elements.py)."""

import numpy as np

from opinfer.engine import elements as el
from opinfer.engine import quant
from opinfer.engine.minilm import LayerNorm

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
