"""Shared test vectors: random and edge-case instances of every element rule,
with the values the Python rules give. tests/contracts/test_shared_vectors.py
has StepVerifier compute the same instances; they must agree bit for bit."""

from __future__ import annotations

import random

from opinfer.engine import elements as el

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
            a, w = [-128] * k, [-127] * k  # the largest accumulator of the models' rows: saturates
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


# contract function name -> case generator
CASES = {
    "elem_requant": requant_cases,
    "elem_dot": dot_cases,
    "elem_layer_norm": layer_norm_cases,
    "elem_exp_neg": exp_cases,
    "elem_softmax": softmax_cases,
    "elem_residual": residual_cases,
    "elem_l2_normalise": l2_cases,
}


def cases(name: str, n: int = 200, seed: int = 7):
    return list(CASES[name](random.Random(f"{name}-{seed}"), n))
