"""The integer SmolLM2: exact KV cache, determinism, the Paris answer, the
generation API (max_tokens, stop ids, stop sequences, sampling)."""

import numpy as np
import pytest

from bench.corpus import PROSE
from opinfer.engine.bpe_tokenizer import load_tokenizer
from opinfer.engine import elements as el
from opinfer.engine.quant import exact_matmul_blocked
from opinfer.engine.smollm2 import LINEAR_IN_BITS, Fused, IntSmolLM2, Linear
from opinfer.engine.smollm2_reference import SmolLM2Reference


@pytest.fixture(scope="module")
def model():
    return IntSmolLM2.build()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_kv_cache_gives_the_same_bits_as_one_pass(model, tok):
    ids = tok.encode("The cache must not change a single bit of the logits.")
    whole = model.session(64).forward(ids, all_logits=True)
    session = model.session(64)
    stepped = np.stack([session.forward([t]) for t in ids])
    assert whole.dtype == np.int64 and np.array_equal(whole, stepped)
    chunked = model.session(64)
    first = chunked.forward(ids[:5], all_logits=True)
    rest = chunked.forward(ids[5:], all_logits=True)
    assert np.array_equal(np.concatenate([first, rest]), whole)


def test_build_and_run_are_deterministic(model, tok):
    ids = tok.encode("Same program, same input, same bits.")
    again = IntSmolLM2.build()
    assert np.array_equal(model.session(32).forward(ids), again.session(32).forward(ids))


def test_greedy_chat_answer_names_paris(model, tok):
    chat = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    ids, reason = model.session().generate(chat, 20, stop_ids=[tok.eos_id])
    assert "Paris" in tok.decode(ids)
    assert reason == "stop" and ids[-1] == tok.eos_id


@pytest.fixture(scope="module")
def greedy(model, tok):
    """A prompt and its first 8 greedy tokens, with no stop condition."""
    prompt = tok.encode("Once upon a time, in a small village by the sea,")
    out = model.session(64).generate(prompt, 8)
    assert out.finish_reason == "length" and len(out.ids) == 8
    return prompt, out.ids


def test_generate_respects_max_tokens(model, greedy):
    prompt, ids = greedy
    for n in (1, 3):
        out = model.session(64).generate(prompt, n)
        assert out.ids == ids[:n] and out.finish_reason == "length"
    assert tuple(model.session(64).generate(prompt, 0)) == ([], "length")


def test_generate_stops_at_a_stop_id(model, greedy):
    prompt, ids = greedy
    stop = ids[2]
    first = ids.index(stop)
    out = model.session(64).generate(prompt, 8, stop_ids=[stop, -1])
    assert out.ids == ids[:first + 1] and out.finish_reason == "stop"


def test_generate_stops_at_a_stop_sequence(model, greedy):
    prompt, ids = greedy

    def end_of_first(seq):
        return next(i + len(seq) for i in range(len(ids)) if ids[i:i + len(seq)] == seq)

    # the generated ids must END WITH a sequence: one of 2 tokens, one of 1, one reached at the limit
    for seq in (ids[3:5], ids[7:8], ids[6:8]):
        out = model.session(64).generate(prompt, 8, stop_sequences=[[99999, 99998], seq])
        assert out.ids == ids[:end_of_first(seq)] and out.finish_reason == "stop"
    # a sequence that starts inside the prompt does not count: only generated ids are matched
    out = model.session(64).generate(prompt, 8, stop_sequences=[[prompt[-1], ids[0]]])
    assert out.ids == ids and out.finish_reason == "length"


def test_generation_is_deterministic(model, greedy):
    prompt, ids = greedy
    assert model.session(64).generate(prompt, 8).ids == ids
    sampling = pytest.importorskip("opinfer.engine.sampling")
    assert model.session(64).generate(prompt, 8, sampler=sampling.SamplingParams(0, seed=5)).ids == ids
    params = sampling.SamplingParams(temperature_milli=900, top_p_q=60000, seed=11)
    a = model.session(64).generate(prompt, 6, sampler=params)
    b = model.session(64).generate(prompt, 6, sampler=params)
    assert a == b and len(a.ids) == 6


def test_sampled_tokens_come_from_next_token_with_the_step_index(model, greedy):
    sampling = pytest.importorskip("opinfer.engine.sampling")
    prompt, _ = greedy
    params = sampling.SamplingParams(temperature_milli=1000, seed=3)
    out = model.session(64).generate(prompt, 4, sampler=params)
    session = model.session(64)
    logits = session.forward(prompt)
    for step, token in enumerate(out.ids):
        assert token == sampling.next_token(logits, params, step)
        logits = session.forward([token])


RNG = np.random.default_rng(7)


def test_blocked_exact_matmul_is_exact():
    from opinfer.engine.quant import _blocks_needed

    seen = set()
    for k, n, a_max, b_max in ((576, 40, 512, 511), (1536, 30, 512, 511), (576, 20, 1024, 1023), (64, 8, 128, 127)):
        b = RNG.integers(-b_max, b_max + 1, size=(k, n))
        b[0] = b_max
        row_max = np.abs(b).max(1)
        for rows in (1, 3):
            for scale in (0, 3, 6, 9, 12):    # small rows need fewer blocks (down to one plain product)
                a = RNG.integers(-a_max, a_max + 1, size=(rows, k)) >> scale
                a[:, 0] = a_max
                for bound in (None, row_max):
                    assert np.array_equal(exact_matmul_blocked(a, b.astype(np.float32), a_max, b_max, bound), a @ b)
                seen.add(_blocks_needed(a[0], row_max, k))
    assert {0, 1, 2} <= seen


def test_linear_follows_the_dense_element_rule_and_fusing_changes_no_bit():
    k = 576
    ws = [RNG.integers(-511, 512, size=(n, k)) for n in (7, 5)]
    lins = [Linear(w.T.astype(np.float32).copy(), RNG.integers(1, 2**20, size=w.shape[0]), shift, -2047, 2047,
                   1 << 30, LINEAR_IN_BITS) for w, shift in zip(ws, (30, 12))]
    x = RNG.integers(-(1 << 30), 1 << 30, size=(4, k)) >> RNG.integers(0, 30, size=(4, 1))
    separate = [lin(x) for lin in lins]
    for lin, w, got in zip(lins, ws, separate):
        for r in range(x.shape[0]):
            assert got[r].tolist() == [el.dense_wide(x[r].tolist(), w[c].tolist(), int(lin.mult[c]), lin.shift,
                                                     lin.lo, lin.hi, LINEAR_IN_BITS) for c in range(w.shape[0])]
    fused = Fused(lins)
    assert all(lin.wt.base is fused.wt for lin in lins)
    for r in range(x.shape[0]):                      # one row: the decoding paths
        assert all(np.array_equal(f, s[r:r + 1]) for f, s in zip(fused.split(x[r:r + 1]), separate))
        assert all(np.array_equal(lin(x[r:r + 1]), s[r:r + 1]) for lin, s in zip(lins, separate))
    assert all(np.array_equal(f, s) for f, s in zip(fused.split(x), separate))


def test_next_token_agreement_with_the_float_reference(model, tok):
    ids = tok.encode(PROSE)
    ours = model.session(len(ids)).forward(ids, all_logits=True).argmax(-1)
    theirs = SmolLM2Reference(max_ctx=len(ids)).forward(ids, all_logits=True).argmax(-1)
    assert np.mean(ours == theirs) >= 0.7


def test_context_overflow_is_a_clear_error(model):
    with pytest.raises(ValueError, match="context overflow"):
        model.session(4).forward([1, 2, 3, 4, 5])


def test_one_row_rms_norm_path_equals_the_batch_path():
    from opinfer.engine.smollm2 import RMSNorm

    x = RNG.integers(-(1 << 31), 1 << 31, size=(8, 576)) >> RNG.integers(0, 31, size=(8, 1))
    x[0] = 0
    gain = RNG.integers(-2**15, 2**15, size=576)
    for eps in (0, 5, 2**30):
        norm = RMSNorm(gain, eps)
        batch = norm(x)
        assert all(np.array_equal(norm(x[r:r + 1]), batch[r:r + 1]) for r in range(len(x)))
