"""The integer MiniLM: determinism, integer-only inference, fidelity smoke."""

import os
import subprocess
import sys

import numpy as np
import pytest

from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.engine import CALIBRATION, OUT_BITS, IntMiniLM, to_float
from opinfer.semantics.quant import exact_matmul, isqrt, requant, round_div


@pytest.fixture(scope="module")
def model():
    return IntMiniLM.build()


def test_isqrt_is_exact_floor_sqrt():
    from math import isqrt as ref
    rng = np.random.default_rng(0)
    xs = np.concatenate([np.arange(0, 2000), rng.integers(0, 2**62, size=5000),
                         np.array([2**62 - 1, (2**31 - 1) ** 2, (2**31) ** 2 - 1])])
    assert isqrt(xs).tolist() == [ref(int(x)) for x in xs]


def test_round_div_and_requant_round_half_up_for_negatives_too():
    assert round_div(np.array([5, -5, 7, -7, 6]), 2).tolist() == [3, -2, 4, -3, 3]
    assert requant(np.array([3, -3, 1, -1]), 1, 1, -128, 127).tolist() == [2, -1, 1, 0]


def test_exact_matmul_matches_int64_at_the_bounds():
    rng = np.random.default_rng(1)
    for k, a_max in [(384, 128), (1536, 128), (1536, 32768), (256, 32767)]:
        a = rng.integers(-a_max, a_max, size=(7, k))
        a[0] = -a_max  # worst case
        b = rng.integers(-128, 128, size=(k, 5))
        b[:, 0] = -128
        assert np.array_equal(exact_matmul(a, b, a_max, 128), a @ b)


def test_embedding_is_deterministic_and_integer(model):
    ids = fw.encode("Determinism is what makes fraud provable.")
    a, b = model.forward(ids), model.forward(ids)
    assert a.dtype == np.int64 and np.array_equal(a, b)
    norm = np.sqrt((to_float(a) ** 2).sum())
    assert abs(norm - 1) < 1e-3
    assert np.abs(a).max() <= 1 << OUT_BITS


def test_build_is_deterministic(model):
    other = IntMiniLM.build()
    ids = fw.encode("Two builds of the program give the same bits.")
    assert np.array_equal(model.forward(ids), other.forward(ids))


def test_same_bits_across_processes_and_thread_counts(model):
    text = "Threads and processes must not change a single bit."
    expected = model.embed(text).tolist()
    code = ("import json; from opinfer.models.minilm.engine import IntMiniLM; "
            f"print(json.dumps(IntMiniLM.build().embed({text!r}).tolist()))")
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert [int(v) for v in out.stdout.strip().strip("[]").split(",")] == expected


def test_close_to_the_float_reference_on_held_out_text(model):
    texts = ["A quiet library is a good place to study.", "Stocks rallied after the earnings report.",
             "x", "Why is the sky blue during the day?"]
    assert not set(texts) & set(CALIBRATION)
    for text in texts:
        ids = fw.encode(text)
        a, b = to_float(model.forward(ids)), fw.reference_forward(ids)
        assert float(a @ b) / np.linalg.norm(a) > 0.985, text
