"""SmolLM2's byte-level BPE tokenizer and ChatML template, from GGUF metadata.

Built with the `tokenizers` package from ``tokenizer.ggml.tokens`` (id order)
and ``tokenizer.ggml.merges`` (rank order, ``"left right"`` strings), the
same way Hugging Face's ``tokenizer.json`` for SmolLM2 is set up:

* Model: BPE with no unk token, no byte fallback, no subword prefix/suffix;
  tokens are spelled in GPT-2's byte-to-unicode alphabet (space = ``Ġ``).
* Pre-tokenizer (``tokenizer.ggml.pre = "smollm"``): llama.cpp splits with
  two regexes in turn, ``\\p{N}`` (every digit is a piece of its own) and
  then GPT-2's
  ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
  (llama.cpp shares this with starcoder/refact). In `tokenizers` that is
  ``Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
  use_regex=True)])``, which is also what SmolLM2's tokenizer.json uses. So
  ``" 42"`` is ``["Ġ", "4", "2"]``: a space before a digit stays its own piece.
* No normalizer, no BOS/EOS added (``tokenizer.ggml.add_bos_token`` is false).
* The 17 CONTROL tokens (type 3: ids 0-16, ``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``, ``<repo_name>``, ...) are added special
  tokens: their text in the input encodes to their single id (as llama.cpp
  does with ``parse_special=true`` and HF does by default). `encode_ordinary`
  treats such text as plain text instead.
* Decoding is byte-level; `decode` keeps special tokens unless asked not to.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from opinfer.models.bytelevel import token_bytes
from opinfer.models.smollm2.gguf import ModelFileError, find_gguf_path, load_metadata

TOKEN_TYPE_CONTROL = 3

#: The ChatML template of SmolLM2-135M-Instruct with its default system
#: prompt cut out as ``{system}``; the metadata template must equal it. (Its
#: Jinja string literals hold real newline characters, not backslash-n.)
_TEMPLATE_SHAPE = (
    "{{% for message in messages %}}"
    "{{% if loop.first and messages[0]['role'] != 'system' %}}"
    "{{{{ '<|im_start|>system\n{system}<|im_end|>\n' }}}}{{% endif %}}"
    "{{{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}}}"
    "{{% endfor %}}"
    "{{% if add_generation_prompt %}}{{{{ '<|im_start|>assistant\n' }}}}{{% endif %}}"
)
_SYSTEM_RE = re.compile(r"'<\|im_start\|>system\n(.*?)<\|im_end\|>\n'", re.S)


def default_system_prompt(template: str) -> str:
    """The default system prompt in SmolLM2's chat template, checking that
    the template is the ChatML one implemented by `apply_chat_template`."""
    match = _SYSTEM_RE.search(template)
    if match is None:
        raise ModelFileError("chat template has no default system prompt")
    system = match.group(1)
    if _TEMPLATE_SHAPE.format(system=system) != template:
        raise ModelFileError("chat template differs from the ChatML template implemented here")
    return system


class SmolLM2Tokenizer:
    """Byte-level BPE over the GGUF vocabulary, plus the ChatML template."""

    def __init__(
        self,
        tokens: Sequence[str],
        merges: Sequence[str],
        token_types: Sequence[int],
        *,
        bos_id: int,
        eos_id: int,
        chat_template: str,
    ) -> None:
        if len(tokens) != len(token_types):
            raise ModelFileError("tokens and token types differ in length")
        self.tokens = list(tokens)
        self.vocab = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self.vocab) != len(self.tokens):
            raise ModelFileError("duplicate tokens in the vocabulary")
        self.merges = [tuple(m.split(" ")) for m in merges]
        if any(len(m) != 2 for m in self.merges):
            raise ModelFileError("a merge is not two space-separated tokens")
        self.special_ids = [i for i, t in enumerate(token_types) if t == TOKEN_TYPE_CONTROL]
        self.special_tokens = [self.tokens[i] for i in self.special_ids]
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.chat_template = chat_template
        self.default_system_prompt = default_system_prompt(chat_template)

        self._ordinary = self._build(with_specials=False)
        self._tok = self._build(with_specials=True)
        self.im_start_id = self.token_to_id("<|im_start|>")
        self.im_end_id = self.token_to_id("<|im_end|>")
        self.endoftext_id = self.token_to_id("<|endoftext|>")

    def _build(self, *, with_specials: bool) -> Tokenizer:
        model = models.BPE(
            vocab=dict(self.vocab),
            merges=list(self.merges),
            dropout=None,
            unk_token=None,
            fuse_unk=False,
            byte_fallback=False,
        )
        tok = Tokenizer(model)
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        if with_specials:
            tok.add_special_tokens(
                [
                    AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
                    for t in self.special_tokens
                ]
            )
            for token, i in zip(self.special_tokens, self.special_ids):
                if tok.token_to_id(token) != i:
                    raise ModelFileError(f"special token {token!r} did not keep id {i}")
        return tok

    @classmethod
    def from_gguf(cls, path: str | os.PathLike | None = None) -> "SmolLM2Tokenizer":
        return cls.from_metadata(load_metadata(path))

    @classmethod
    def from_metadata(cls, meta: Mapping) -> "SmolLM2Tokenizer":
        """From GGUF tokenizer metadata: the file's, or the copy shipped in
        opinfer/models/smollm2/tokenizer.json.gz (what the spec gives: no weights needed)."""
        if meta.get("tokenizer.ggml.model") != "gpt2":
            raise ModelFileError(f"expected a gpt2 (byte-level BPE) tokenizer, got {meta.get('tokenizer.ggml.model')!r}")
        if meta.get("tokenizer.ggml.pre") != "smollm":
            raise ModelFileError(f"expected the smollm pre-tokenizer, got {meta.get('tokenizer.ggml.pre')!r}")
        return cls(
            meta["tokenizer.ggml.tokens"],
            meta["tokenizer.ggml.merges"],
            meta["tokenizer.ggml.token_type"],
            bos_id=int(meta["tokenizer.ggml.bos_token_id"]),
            eos_id=int(meta["tokenizer.ggml.eos_token_id"]),
            chat_template=meta["tokenizer.chat_template"],
        )

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_to_id(self, token: str) -> int:
        return self.vocab[token]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text becomes its single id."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, treating special-token text as plain text."""
        return self._ordinary.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (invalid UTF-8 byte runs become U+FFFD)."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @functools.cached_property
    def _bytes(self) -> list[bytes]:
        return token_bytes(self.tokens, self.special_ids)

    def token_bytes(self) -> list[bytes]:
        """Each token's bytes (byte-level spelling; special tokens: none), in id order."""
        return self._bytes

    def id_to_piece(self, i: int) -> str:
        """The token's vocabulary spelling (byte-level alphabet)."""
        return self.tokens[i]

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render SmolLM2's ChatML template (``tokenizer.chat_template``).

        When the first message is not a system message, the template's
        default system prompt comes first. Each message is
        ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; the generation prompt
        is ``<|im_start|>assistant\\n``."""
        parts = []
        for index, message in enumerate(messages):
            if index == 0 and messages[0]["role"] != "system":
                parts.append(f"<|im_start|>system\n{self.default_system_prompt}<|im_end|>\n")
            parts.append(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def encode_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """`encode` of `apply_chat_template`."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))


@functools.lru_cache(maxsize=2)
def _load(path: str) -> SmolLM2Tokenizer:
    return SmolLM2Tokenizer.from_gguf(path)


def load_tokenizer(path: str | os.PathLike | None = None) -> SmolLM2Tokenizer:
    """The tokenizer of the GGUF file (default: the installed package's), cached."""
    return _load(str(path or find_gguf_path()))
