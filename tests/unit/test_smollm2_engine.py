"""The integer SmolLM2 on the GGUF's own blocks: the native forward equals the
numpy reference bit for bit (whole sequences, any thread count, SIMD or scalar),
exact KV cache, determinism, the Paris answer, the generation API (max_tokens,
stop ids, stop sequences, sampling)."""

import numpy as np
import pytest

from bench.corpus import PROSE
from opinfer import native
from opinfer.models.smollm2.engine import IntSmolLM2, default_model, forward_many, reference_forward
from opinfer.models.smollm2.reference import SmolLM2Reference
from opinfer.models.smollm2.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model():
    return default_model()


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


def test_native_forward_equals_the_numpy_reference(model, tok):
    """The whole forward (prefill, then two decode steps) in C against the same rules
    in plain numpy, op by op: every logit of every position, bit for bit."""
    ids = tok.encode("Integer sums are exact, so every lane and thread gives the same bits.")
    cache: dict = {}
    ref = np.concatenate([reference_forward(model, ids, cache), reference_forward(model, [17], cache),
                          reference_forward(model, [4000], cache)])
    session = model.session(64)
    got = np.concatenate([session.forward(ids, all_logits=True), session.forward([17], all_logits=True),
                          session.forward([4000], all_logits=True)])
    assert got.dtype == np.int64 and np.array_equal(got, ref)


@pytest.mark.parametrize("threads,simd", [(1, 3), (2, 3), (4, 3), (2, 2), (2, 1), (2, 0)])
def test_threads_and_simd_change_no_bit(model, tok, threads, simd):
    ids = tok.encode("Threads split output rows; the sums stay exact.")
    expected = model.session(64).forward(ids, all_logits=True)
    before = native.lib().oi_get_threads()
    try:
        native.set_threads(threads)
        native.set_simd(simd)
        assert np.array_equal(model.session(64).forward(ids, all_logits=True), expected)
    finally:
        native.set_threads(before)
        native.set_simd()


def test_batched_sequences_get_their_own_bits(model, tok):
    prompts = [tok.encode("First sequence."), tok.encode("A second, longer sequence of tokens."), [5]]
    alone = [model.session(64).forward(p, all_logits=True) for p in prompts]
    sessions = [model.session(64) for _ in prompts]
    together = forward_many(sessions, prompts, all_logits=True)
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
    steps = forward_many(sessions, [[11], [12], [13]])                  # a decode step of all three
    for p, t, got in zip(prompts, (11, 12, 13), steps):
        s = model.session(64)
        s.forward(p)
        assert np.array_equal(s.forward([t]), got)


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
    from opinfer.engine import sampling
    assert model.session(64).generate(prompt, 8, sampler=sampling.SamplingParams(0, seed=5)).ids == ids
    params = sampling.SamplingParams(temperature_milli=900, top_p_q=60000, seed=11)
    a = model.session(64).generate(prompt, 6, sampler=params)
    b = model.session(64).generate(prompt, 6, sampler=params)
    assert a == b and len(a.ids) == 6


def test_sampled_tokens_come_from_next_token_with_the_step_index(model, greedy):
    from opinfer.engine import sampling
    prompt, _ = greedy
    params = sampling.SamplingParams(temperature_milli=1000, seed=3)
    out = model.session(64).generate(prompt, 4, sampler=params)
    session = model.session(64)
    logits = session.forward(prompt)
    for step, token in enumerate(out.ids):
        assert token == sampling.next_token(logits, params, step)
        logits = session.forward([token])


def test_next_token_agreement_with_the_float_reference(model, tok):
    ids = tok.encode(PROSE)
    ours = model.session(len(ids)).forward(ids, all_logits=True).argmax(-1)
    theirs = SmolLM2Reference(max_ctx=len(ids)).forward(ids, all_logits=True).argmax(-1)
    assert np.mean(ours == theirs) >= 0.7


def test_context_overflow_is_a_clear_error(model):
    with pytest.raises(ValueError, match="context overflow"):
        model.session(4).forward([1, 2, 3, 4, 5])


def test_the_kv_cache_grows_and_keeps_its_positions(model, tok):
    ids = tok.encode("A cache that starts small " * 12)
    whole = model.session(256).forward(ids)
    s = model.session(256)
    assert s.k.shape[2] == 64
    s.forward(ids[:50])
    s.forward(ids[50:])
    assert s.k.shape[2] >= len(ids) and np.array_equal(s.forward([3], all_logits=True)[0],
                                                       _then(model, ids, 3))
    assert np.array_equal(model.session(256).forward(ids), whole)


def _then(model, ids, token):
    s = model.session(len(ids) + 1)
    s.forward(ids)
    return s.forward([token])


def test_out_of_vocabulary_tokens_are_a_clear_error(model):
    with pytest.raises(ValueError, match="token ids"):
        model.session(8).forward([49152])


def test_concurrent_callers_share_the_kernels_safely(model, tok):
    """A node runs requests on several Python threads (ctypes releases the GIL): the
    thread pool serves one caller at a time, the other computes alone, same bits."""
    import threading

    prompts = [tok.encode("One thread's prompt."), tok.encode("Another thread, another prompt, longer.")]
    expected = [model.session(64).forward(p, all_logits=True) for p in prompts]
    results: dict = {}

    def run(k):
        for _ in range(3):
            results.setdefault(k, []).append(model.session(64).forward(prompts[k], all_logits=True))

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, expected[k]) for k in (0, 1) for r in results[k])


@pytest.mark.parametrize("simd", [3, 2, 1, 0])
def test_attention_at_the_int16_bounds_and_long_rows(model, simd):
    """The SIMD attention (int16 madd scores widened to int64, p . v two positions per madd in
    int32 lanes) against the numpy rules on a KV cache filled with the int16 extremes and
    random values, over 1,001 positions (an odd count: the unpaired last position)."""
    m = model.sliced(layers=2, vocab=512, rope_rows=1100)
    rng = np.random.default_rng(5)
    n, nkv, D = 1000, m.n_kv_heads, m.head_dim
    k = rng.choice(np.array([-32768, 32767, -32767, 0, 1], dtype=np.int16), size=(2, nkv, n, D))
    v = rng.integers(-32768, 32768, size=(2, nkv, n, D)).astype(np.int16)
    v[:, :, ::7] = -32768                            # the largest |p v| terms
    session = m.session(1100)
    session.reserve(n + 1)
    session.k[:, :, :n], session.v[:, :, :n], session.pos = k, v, n
    cache = {"pos": n}
    for layer in range(2):
        cache[("k", layer)] = k[layer].transpose(1, 0, 2).astype(np.int64)
        cache[("v", layer)] = v[layer].transpose(1, 0, 2).astype(np.int64)
    try:
        native.set_simd(simd)
        got = session.forward([17, 300], all_logits=True)
    finally:
        native.set_simd()
    assert np.array_equal(got, reference_forward(m, [17, 300], cache))
