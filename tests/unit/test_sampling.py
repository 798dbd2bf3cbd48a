"""Seeded integer sampling (opinfer/engine/sampling.py): the vectorised
next_token equals the element rules composed chunk by chunk (as a dispute
checks it), the sorting top-p threshold equals the on-chain bisection, and
the OpenAI-style parameters map and validate as documented."""

import random

import numpy as np
import pytest
from eth_abi import encode
from hypothesis import given, settings
from hypothesis import strategies as st

from opinfer.engine import sampling
from opinfer.engine.sampling import SamplingParams, from_openai, next_token, next_token_by_rules
from opinfer.semantics import elements as el
from opinfer.semantics.merkle import keccak

VOCAB = 49152


def _logits(rng: np.random.Generator, vocab: int, kind: int) -> np.ndarray:
    if kind == 0:    # SmolLM2-like spread: logits at 2^-16, a few tens of nats
        return rng.integers(-2**21, 2**21, size=vocab)
    if kind == 1:    # many ties, including at the top
        return rng.choice(rng.integers(-2**18, 2**18, size=4), size=vocab)
    if kind == 2:    # all equal
        return np.full(vocab, int(rng.integers(-2**31, 2**31)))
    x = rng.integers(-2**31, 2**31 - 1, size=vocab)   # extreme range: most weights 0
    x[rng.integers(0, vocab, size=3)] = x.max()
    return x


@pytest.mark.parametrize("vocab", [1, 2, 255, 256, 257, 300, 700, VOCAB])
def test_next_token_equals_chunked_rules(vocab):
    rng = np.random.default_rng(vocab)
    cases = 24 if vocab == VOCAB else 60
    for n in range(cases):
        tm = [0, 1, 2000, 1000][n % 4] if n < 8 else int(rng.integers(0, 2001))
        q = [1, 65536][n % 2] if n % 3 == 0 else int(rng.integers(1, 65537))
        params = SamplingParams(tm, q, int(rng.integers(0, 2**64, dtype=np.uint64)))
        logits = _logits(rng, vocab, n % 4)
        step = int(rng.integers(0, 4096))
        token = next_token(logits, params, step)
        assert 0 <= token < vocab
        assert token == next_token_by_rules(logits, params, step), (vocab, params, step)


def test_greedy_ties_to_lowest_id():
    logits = np.zeros(VOCAB, dtype=np.int64)
    logits[[7, 300, 40000]] = 5
    assert next_token(logits, SamplingParams(0), 0) == 7 == next_token_by_rules(logits, SamplingParams(0), 0)


def test_padding_has_weight_zero_and_top_weight_one():
    logits = np.array([-(2**31), 0, 2**31 - 1, 2**31 - 1])
    for tm in (1, 1000, 2000):
        w = sampling.padded_weights(logits, tm)
        assert w.size == 256 and w[4:].sum() == 0
        assert w[2] == w[3] == el.WEIGHT_MAX
        assert el.sample_weight(2**31 - 1 - sampling.PAD_OFFSET, 2**31 - 1, tm) == 0


def _weights(rng: random.Random, n: int) -> list[int]:
    kind = rng.randrange(4)
    if kind == 0:
        return [rng.randint(0, el.WEIGHT_MAX) for _ in range(n)]
    if kind == 1:
        pool = [rng.randint(0, el.WEIGHT_MAX) for _ in range(rng.randint(1, 4))]
        return [rng.choice(pool) for _ in range(n)]
    if kind == 2:
        return [el.WEIGHT_MAX] * n
    return [rng.choice([0, 0, 0, 1, 2, el.WEIGHT_MAX]) for _ in range(n)]


def _chunks(weights: list[int]) -> list[list[int]]:
    return [weights[j:j + 256] for j in range(0, len(weights), 256)]


def test_top_p_threshold_equals_bisection_random():
    rng = random.Random(5)
    for n in range(400):
        weights = _weights(rng, rng.choice([1, 2, 5, 256, 700]))
        q = rng.choice([1, 65536, 32768, rng.randint(1, 65536)])
        expected = el.top_p_threshold_bisect(_chunks(weights), q)
        assert el.top_p_threshold(weights, q) == expected
        assert sampling.top_p_threshold(np.array(weights), q) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, el.WEIGHT_MAX), min_size=1, max_size=600), st.integers(1, el.TOP_P_ONE))
def test_top_p_threshold_equals_bisection_hypothesis(weights, q):
    expected = el.top_p_threshold_bisect(_chunks(weights), q)
    assert el.top_p_threshold(weights, q) == expected == sampling.top_p_threshold(np.array(weights), q)
    # it is the largest accepted threshold
    total = sum(weights)
    assert el.top_p_accepts(el.masked_sum(weights, expected), total, q)
    if expected < el.WEIGHT_MAX:
        assert not el.top_p_accepts(el.masked_sum(weights, expected + 1), total, q)


def test_top_p_threshold_full_vocabulary():
    rng = np.random.default_rng(9)
    for q in (1, 6554, 58982, 65536):
        w = sampling.padded_weights(_logits(rng, VOCAB, 0), 1000)
        assert sampling.top_p_threshold(w, q) == el.top_p_threshold_bisect(_chunks(w.tolist()), q)


def test_bisection_takes_17_steps_at_most():
    lo, hi = 1, el.WEIGHT_MAX
    for _ in range(el.BISECT_STEPS - 1):   # always accepting: lo climbs to 2^16 in 16 steps
        lo, hi = el.bisect_step(lo, hi, [1], 1, 1)
    assert (lo, hi) == (el.WEIGHT_MAX, el.WEIGHT_MAX)
    assert el.bisect_step(lo, hi, [0], 1, 1) == (lo, hi)


def test_draw_is_keccak_of_abi_encoded_seed_and_step():
    for seed, step, total in ((0, 0, 1), (2**64 - 1, 17, 10**9), (123, 2**40, 2**255 - 1)):
        h = int.from_bytes(keccak(encode(["uint256", "uint256"], [seed, step])), "big")
        assert el.draw(seed, step, total) == h % total
    with pytest.raises(ValueError):
        el.draw(1, 1, 0)


def test_pick_chunk_and_pick_in_chunk_compose_to_the_running_sum():
    rng = random.Random(3)
    for _ in range(100):
        weights = _weights(rng, rng.choice([256, 700, 1000]))
        tau = rng.choice([1, rng.randint(1, el.WEIGHT_MAX)])
        kept = [w if w >= tau else 0 for w in weights]
        if sum(kept) == 0:
            continue
        cum = np.cumsum(kept)
        for r in (0, int(cum[-1]) - 1, rng.randrange(int(cum[-1]))):
            chunks = _chunks(weights)
            j, rest = el.pick_chunk([el.masked_sum(c, tau) for c in chunks], r)
            assert j * 256 + el.pick_in_chunk(chunks[j], tau, rest) == int(np.searchsorted(cum, r, side="right"))


def test_sampling_follows_the_softmax_roughly():
    # logits 0, -ln2, -2 ln2 (at 2^-16) with T = 1: probabilities 4/7, 2/7, 1/7
    ln2 = round(np.log(2) * 2**16)
    logits = np.array([0, -ln2, -2 * ln2])
    params = SamplingParams(1000, 65536, 42)
    counts = np.bincount([next_token(logits, params, s) for s in range(3500)], minlength=3) / 3500
    assert np.allclose(counts, [4 / 7, 2 / 7, 1 / 7], atol=0.03)
    # top_p 0.5 keeps only the most likely token; T = 2 flattens
    assert {next_token(logits, SamplingParams(1000, 32768, 42), s) for s in range(200)} == {0}
    flat = np.bincount([next_token(logits, SamplingParams(2000, 65536, 7), s) for s in range(3500)]) / 3500
    w = np.exp(-np.arange(3) * np.log(2) / 2)
    assert np.allclose(flat, w / w.sum(), atol=0.03)


def test_seed_and_step_determine_the_draw():
    logits = np.random.default_rng(1).integers(-2**18, 2**18, size=VOCAB)
    a = [next_token(logits, SamplingParams(1000, 65536, 1), s) for s in range(20)]
    assert a == [next_token(logits, SamplingParams(1000, 65536, 1), s) for s in range(20)]
    assert a != [next_token(logits, SamplingParams(1000, 65536, 2), s) for s in range(20)]


def test_from_openai_defaults_and_mapping():
    assert from_openai() == SamplingParams(1000, 65536, 0)
    assert from_openai(0, None, None) == SamplingParams(0, 65536, 0)
    assert from_openai(0.7, 0.9, 5) == SamplingParams(700, 58982, 5)
    assert from_openai(2, 0, 2**64 - 1) == SamplingParams(2000, 1, 2**64 - 1)
    assert from_openai(0.0005, 1e-9).temperature_milli == 1 and from_openai(0.0004).temperature_milli == 0


@pytest.mark.parametrize("kwargs,name", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": 2.01}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": "1"}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"), ({"top_p": True}, "top_p"),
    ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"), ({"seed": 1.5}, "seed"),
])
def test_from_openai_rejects_with_the_parameter_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        from_openai(**kwargs)


@pytest.mark.parametrize("args,name", [
    ((2001,), "temperature_milli"), ((-1,), "temperature_milli"), ((1000, 0), "top_p_q"),
    ((1000, 65537), "top_p_q"), ((1000, 1, 2**64), "seed"), ((1.0,), "temperature_milli"),
])
def test_sampling_params_validate(args, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(*args)


# ---------------------------------------------------------------- penalties and logit bias


def _penalty_params(rng: np.random.Generator, temperature_milli: int = 0) -> SamplingParams:
    bias = [(int(t), int(rng.integers(-2**15, 2**15))) for t in rng.integers(0, 800, size=int(rng.integers(0, 6)))]
    if bias:
        bias.append((bias[0][0], 77))               # a duplicate id: the biases add
    return SamplingParams(temperature_milli, presence_q=int(rng.integers(-2**15, 2**15)),
                          frequency_q=int(rng.integers(-2**15, 2**15)), logit_bias=tuple(bias))


@pytest.mark.parametrize("vocab", [256, 700])
def test_penalise_equals_the_element_rule(vocab):
    rng = np.random.default_rng(vocab)
    for n in range(6):
        logits = _logits(rng, vocab, n % 4)
        params = _penalty_params(rng)
        generated = [int(t) for t in rng.integers(0, vocab, size=int(rng.integers(0, 40)))] + [vocab + 5, -1]
        got = sampling.penalise(logits, params, generated)
        want = [el.penalised_logit(int(logits[t]), t, generated, params.presence_q, params.frequency_q,
                                   list(params.logit_bias)) for t in range(vocab)]
        assert got.tolist() == want
        assert got.min() >= -2**31 and got.max() < 2**31


def test_penalty_rule_is_openais_in_fixed_point():
    one = 1 << 16                                  # a logit of 1.0
    # presence 0.5 (2048 at 2^-12), frequency 0.25 (1024), count 3: 0.5 + 0.75 = 1.25 off; bias +2.5 (640 at 2^-8)
    assert el.penalty(10 * one, 3, 2048, 1024, 640) == 10 * one - (5 * one) // 4 + (5 * one) // 2
    assert el.penalty(10 * one, 0, 2048, 1024, 0) == 10 * one          # never generated: no penalty
    assert el.penalty(2**31 - 1, 0, 0, 0, 25600) == 2**31 - 1          # clamped to int32
    p = from_openai(0, presence_penalty=0.5, frequency_penalty=-2, logit_bias={"5": -100, 7: 0.5, "300": 100})
    assert (p.presence_q, p.frequency_q, p.logit_bias) == (2048, -8192, ((5, -25600), (7, 128), (300, 25600)))
    assert from_openai(0).penalised is False and p.penalised


@pytest.mark.parametrize("kwargs,name", [
    (dict(presence_penalty=2.01), "presence_penalty"), (dict(frequency_penalty=-2.5), "frequency_penalty"),
    (dict(presence_penalty="1"), "presence_penalty"), (dict(logit_bias={"5": 100.5}), "logit_bias"),
    (dict(logit_bias={"x": 1}), "logit_bias"), (dict(logit_bias={"-1": 1}), "logit_bias"),
    (dict(logit_bias={"49152": 1}), "logit_bias"), (dict(logit_bias={"5": 1, 5: 2}), "logit_bias"),
    (dict(logit_bias={str(t): 1 for t in range(301)}), "logit_bias"), (dict(logit_bias=[1]), "logit_bias"),
])
def test_penalty_parameters_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        from_openai(**kwargs, vocab=VOCAB)


def test_choose_penalises_before_argmax_and_sampling():
    rng = np.random.default_rng(5)
    logits = rng.integers(-2**20, 2**20, size=700)
    top = int(np.argmax(logits))
    assert sampling.choose(logits, None, []) == top == sampling.choose(logits, SamplingParams(0), [top])
    # a +100 bias wins greedy decoding; a -100 bias on the argmax removes it
    assert sampling.choose(logits, SamplingParams(0, logit_bias=((9, 25600),)), []) == 9
    second = int(np.argsort(logits)[-2])
    assert sampling.choose(logits, SamplingParams(0, logit_bias=((top, -25600),)), []) == second
    # a large frequency penalty stops a repeat once the token was generated
    rep = SamplingParams(0, frequency_q=2**15 - 1)
    assert sampling.choose(logits, rep, []) == top and sampling.choose(logits, rep, [top]) != top
    # sampling draws from the penalised row at step len(generated)
    params = SamplingParams(800, 60000, 11, presence_q=3000, frequency_q=-500, logit_bias=((3, 900),))
    generated = [top, 3, 3, 17]
    z = sampling.penalise(logits, params, generated)
    assert sampling.choose(logits, params, generated) == next_token(z, params, 4) == next_token_by_rules(z, params, 4)


@pytest.mark.parametrize("threads", [1, 2])
def test_native_batched_sampler_equals_the_numpy_rules(threads):
    """next_tokens (the native kernels: one call for every row's weights, tau and kept, one for
    the picks) against next_token row by row and, on small vocabularies, the element rules;
    choose_many against choose (greedy and penalised rows mixed in)."""
    from opinfer import native

    rng = np.random.default_rng(77 + threads)
    before = native.lib().oi_get_threads()
    native.set_threads(threads)
    try:
        for n in range(40):
            vocab = [VOCAB, 300, 257, 1][n % 4]
            rows = [_logits(rng, vocab, int(k)) for k in rng.integers(0, 4, size=int(rng.integers(1, 6)))]
            params = [SamplingParams(int(rng.choice([1, 700, 1000, 2000, int(rng.integers(1, 2001))])),
                                     int(rng.choice([1, 100, 59000, 65535, 65536])),
                                     int(rng.integers(0, 2**64, dtype=np.uint64))) for _ in rows]
            steps = [int(rng.integers(0, 4096)) for _ in rows]
            got = sampling.next_tokens(rows, params, steps)
            assert got == [next_token(r, p, s) for r, p, s in zip(rows, params, steps)], n
            if vocab < VOCAB:
                assert got == [next_token_by_rules(r, p, s) for r, p, s in zip(rows, params, steps)], n
            mixed = [None, SamplingParams(0), SamplingParams(800, 50000, 9, presence_q=3000, logit_bias=((3, 900),))]
            generated = [[], [1, 2], [0, 0, int(vocab > 1)]] + [list(range(s % 5)) for s in steps]
            every = [rows[0]] * 3 + rows
            tokens, drawn = sampling.choose_many(every, mixed + params, generated)
            assert tokens == [sampling.choose(r, p, g) for r, p, g in zip(every, mixed + params, generated)]
            assert all(np.array_equal(d, sampling.penalise(r, p, g))
                       for d, r, p, g in zip(drawn, every, mixed + params, generated))
    finally:
        native.set_threads(before)
