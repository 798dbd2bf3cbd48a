"""MiniLM on the native kernels equals its numpy rules, op by op and on whole sequences,
at every SIMD level (scalar, AVX2, AVX-VNNI) and thread count (1, 2, 4)."""

import numpy as np
import pytest

from opinfer.models.minilm import weights as fw
from opinfer import native
from opinfer.models.minilm.engine import GELU_HALF, IntMiniLM
from opinfer.semantics.quant import EXP_INPUT_MAX, exp_neg

TEXTS = ["A cat.", "x", "Optimistic verification trusts first and checks later; the challenger re-executes. " * 2]


@pytest.fixture(scope="module")
def model():
    return IntMiniLM.build()


def _levels():
    before = native.lib().oi_get_threads()
    try:
        for simd in (0, 1, 2):
            for threads in (1, 2, 4):
                native.set_simd(simd)
                native.set_threads(threads)
                yield simd, threads
    finally:
        native.set_simd()
        native.set_threads(before)


def test_exp_table_equals_the_polynomial_everywhere():
    lib = native.lib()
    rng = np.random.default_rng(3)
    us = np.concatenate([np.arange(0, 6000), rng.integers(6000, EXP_INPUT_MAX + 1, 3000), [EXP_INPUT_MAX]])
    assert [lib.oi_exp_neg_tab(int(u)) for u in us] == exp_neg(us).tolist()


def test_dense_layers_equal_numpy_at_the_bounds(model):
    rng = np.random.default_rng(0)
    layer = model.layers[1]
    x8 = rng.integers(-128, 128, size=(13, 384))
    x8[0], x8[1] = -128, 127                              # the extremes of the byte planes
    g = rng.integers(-32768, 32768, size=(13, 1536))
    g[0], g[1] = -32768, 32767
    cases = [(layer.q, x8), (layer.o, x8), (layer.up, x8), (layer.down, g)]
    want = [d(x) for d, x in cases]
    for _ in _levels():
        for (d, x), w in zip(cases, want):
            assert np.array_equal(d.native_call(x), w)
    with pytest.raises(ValueError):
        layer.q.native_call(x8 * 2)                        # outside int8: refused, not wrapped


def test_layer_norm_and_attention_equal_numpy(model):
    rng = np.random.default_rng(1)
    layer = model.layers[2]
    r = rng.integers(-(1 << 15), 1 << 15, size=(9, 384))
    r[0] = 7                                               # a constant row: variance eps only
    want_ln = layer.ln1(r)
    qkv = {t: [rng.integers(-128, 128, size=(t, 384)) for _ in range(3)] for t in (1, 5, 37, 128)}
    qkv[5][0][:] = 127                                     # saturated scores
    want_attn = {t: model._attend(layer, *a) for t, a in qkv.items()}
    for _ in _levels():
        assert np.array_equal(layer.ln1.native_call(r), want_ln)
        for t, a in qkv.items():
            assert np.array_equal(model.attention_native(layer, *a), want_attn[t])


def test_whole_forward_equals_numpy_alone_and_batched(model):
    seqs = [fw.encode(t) for t in TEXTS]
    long = fw.encode(" ".join(["token"] * 300))
    assert len(long) == 256                                # the tokenizer's truncation: the longest job
    want = model.forward_batch_reference(seqs)
    assert all(np.array_equal(a, model.forward_reference(s)) for a, s in zip(want, seqs))
    want_long = model.forward_reference(long)
    for simd, threads in _levels():
        assert all(np.array_equal(model.forward(s), w) for s, w in zip(seqs, want))
        got = model.forward_batch([seqs[2], seqs[0], seqs[2], seqs[1]])
        assert all(np.array_equal(a, want[k]) for a, k in zip(got, [2, 0, 2, 1]))
        if simd > 0:                                       # the scalar loops take seconds at 256 tokens
            assert np.array_equal(model.forward(long), want_long)


def test_the_gelu_lookup_and_bad_ids_are_refused(model):
    assert len(model.layers[0].gelu) == 2 * GELU_HALF
    with pytest.raises(ValueError):
        model.forward(np.array([101, model.word.shape[0], 102]))
    with pytest.raises(ValueError):
        model.forward(np.arange(model.pos.shape[0] + 1) % 1000)
