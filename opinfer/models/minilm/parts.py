"""all-MiniLM-L6-v2's parts: refusal rule, engine, program, tokenizer."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from opinfer.models import shipped
from opinfer.models.minilm.spec import DIMENSIONS, NAME, POSITIONS, VOCAB
from opinfer.models.spec import JobRefused


def check(job) -> None:
    """What the program's committed limits refuse too (minilm_program: no new
    tokens, no stops, one token per position row, ids below the vocabulary)."""
    if job.max_tokens or job.stop_sequences:
        raise JobRefused("an embedding job has max_tokens 0 and no stop sequences")
    if len(job.tokens) > POSITIONS:
        raise JobRefused(f"{len(job.tokens)} tokens > {POSITIONS} positions of {NAME}")
    if not job.tokens or max(job.tokens) >= VOCAB:
        raise JobRefused(f"token ids must be in [0, {VOCAB})")


def load_engine():
    from opinfer.models.minilm.engine import IntMiniLM

    return IntMiniLM.build()


def run_batch(engine, jobs: list) -> list:
    """One stacked pass: each vector is bit for bit forward(ids) alone."""
    from opinfer.trace.outputs import embedding_output

    return [(embedding_output(v), {"embedding": [int(x) for x in v]})
            for v in engine.forward_batch([list(job.tokens) for job in jobs])]


def load_program():
    from opinfer.models.minilm.program import default_program

    return default_program()


def release() -> None:
    from opinfer.models.minilm.program import default_program

    default_program.cache_clear()


def from_program(program):
    """The fast engine from a built program's integers alone (no calibration)."""
    from opinfer.models.built import minilm_from_program

    return minilm_from_program(program)


def accepts(path: Path) -> bool:
    """A safetensors folder holding this model: a BERT config of its sizes."""
    import json

    config = path / "config.json"
    if not (path.is_dir() and config.is_file() and (path / "model.safetensors").is_file()):
        return False
    cfg = json.loads(config.read_text())
    return (cfg.get("model_type") == "bert" and cfg.get("vocab_size") == VOCAB and cfg.get("hidden_size") == DIMENSIONS
            and cfg.get("num_hidden_layers") == 6 and cfg.get("max_position_embeddings") == POSITIONS)


def build_program(path: Path | None = None):
    """The integer program built (calibrated) from the package's files, or from a
    folder with the same files (config.json, model.safetensors, tokenizer.json)."""
    import os

    from opinfer.models.minilm import program, weights

    if path is None:
        return program.default_program()
    before = os.environ.get(weights.ENV_DIR)
    os.environ[weights.ENV_DIR] = str(path)
    weights.load.cache_clear()
    weights.tokenizer.cache_clear()
    try:
        return program.build_program(__import__("opinfer.models.minilm.engine", fromlist=["IntMiniLM"]).IntMiniLM.build())
    finally:
        if before is None:
            os.environ.pop(weights.ENV_DIR, None)
        else:
            os.environ[weights.ENV_DIR] = before
        weights.load.cache_clear()
        weights.tokenizer.cache_clear()


#: The model package's tokenizer.json, shipped for clients.
TOKENIZER_FILE = Path(__file__).with_name("tokenizer.json.gz")
#: sentence-transformers' max_seq_length for this model (its sentence_bert_config.json)
MAX_SEQ_LENGTH = 256


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The WordPiece tokenizer from the copy of the package's tokenizer.json
    shipped in this folder (opinfer/models/shipped.py: no weights needed), set
    up as sentence-transformers runs the model and as the engine's copy is
    (minilm_weights.tokenizer; tests/unit/test_client_tokenizers.py): no
    padding (the file pads to 128), truncation at MAX_SEQ_LENGTH."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(shipped.read(TOKENIZER_FILE).decode())
    tok.no_padding()
    tok.enable_truncation(MAX_SEQ_LENGTH)
    return tok


def encode(text: str):
    return np.asarray(tokenizer().encode(text).ids, dtype=np.int64)


def export_tokenizer() -> Path:
    from opinfer.models.minilm.weights import model_dir

    shipped.write(TOKENIZER_FILE, (model_dir() / "tokenizer.json").read_bytes())
    tokenizer.cache_clear()
    return TOKENIZER_FILE


def to_float(vector) -> np.ndarray:
    from opinfer.models.minilm.engine import to_float as scale

    return scale(np.asarray(vector, dtype=np.int64))
