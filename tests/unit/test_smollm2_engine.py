"""The integer SmolLM2: exact KV cache, determinism, the Paris answer."""

import numpy as np
import pytest

from bench.corpus import PROSE
from opinfer.engine.bpe_tokenizer import load_tokenizer
from opinfer.engine.smollm2 import IntSmolLM2
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
    answer = tok.decode(model.session().generate(chat, 20, stop_ids=[tok.eos_id]))
    assert "Paris" in answer


def test_next_token_agreement_with_the_float_reference(model, tok):
    ids = tok.encode(PROSE)
    ours = model.session(len(ids)).forward(ids, all_logits=True).argmax(-1)
    theirs = SmolLM2Reference(max_ctx=len(ids)).forward(ids, all_logits=True).argmax(-1)
    assert np.mean(ours == theirs) >= 0.7


def test_context_overflow_is_a_clear_error(model):
    with pytest.raises(ValueError, match="context overflow"):
        model.session(4).forward([1, 2, 3, 4, 5])
