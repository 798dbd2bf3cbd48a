"""Byte-level BPE vocabularies (GPT-2's scheme: SmolLM2's, and most llama-family
GGUF files' `tokenizer.ggml.model = "gpt2"`): every byte is spelled as one
printable character, so a token's spelling maps back to its bytes.

A model folder whose tokenizer is byte-level uses this to give each token's
bytes (`token_bytes`), which the coordinator needs to stream text token by
token (coordinator/generation.py) without knowing how a model spells bytes."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_bytes(spellings: Sequence[str], special_ids: Iterable[int]) -> list[bytes]:
    """Each token's bytes from its byte-level spelling; a special token has none (it is
    not text: decode(skip_special_tokens) shows nothing for it). A character outside the
    byte alphabet (none in a well-formed vocabulary) reads as "?"."""
    back = _alphabet_to_latin1()
    special = set(special_ids)
    # str.translate + encode run in C: a 49,152-token vocabulary in ~30 ms (a coordinator
    # builds this on a worker thread that holds the GIL meanwhile)
    return [b"" if i in special else piece.translate(back).encode("latin-1", errors="replace")
            for i, piece in enumerate(spellings)]


@functools.cache
def _alphabet_to_latin1() -> dict[int, int]:
    """Each alphabet character -> the code point of its byte (latin-1 encodes it as that byte)."""
    return {ord(c): b for b, c in bytes_to_unicode().items()}
