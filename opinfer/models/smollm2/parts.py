"""SmolLM2-135M-Instruct's parts: refusal rule, engine, program, tokenizer and chat template
(requests, results and batched runs are the llama family's: opinfer/models/llama/parts.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from opinfer.errors import CommitmentError
from opinfer.models import shipped
from opinfer.models.llama.parts import request, result, run_batch, sampler  # noqa: F401  (the family's, shared)
from opinfer.models.spec import JobRefused


def check(job) -> None:
    """What the program's committed limits refuse too (smollm2_program.check_job:
    ids beyond the vocabulary, no new token, temperature above 2.0, more
    positions than the context), and sampling parameters out of range."""
    from opinfer.models.smollm2.program import check_job

    if job.max_tokens < 1:
        raise JobRefused("a chat job needs max_tokens >= 1")
    try:
        check_job(job)
    except CommitmentError as exc:
        raise JobRefused(str(exc)) from None
    sampler(job)


def load_engine():
    from opinfer.models.smollm2.engine import default_model

    return default_model()


def decoder(prefill_tokens: int | None = None):
    """A continuous-batching decoder over this model's engine (the node's scheduler drives it)."""
    from opinfer.models.smollm2.engine import Decoder

    return Decoder(prefill_tokens)


def load_program():
    from opinfer.models.smollm2.program import default_program

    return default_program()


def from_program(program):
    """The native engine from a built program's integers alone (GGUF blocks, tables, scales)."""
    from opinfer.models.llama.built import model_from_program
    from opinfer.models.smollm2.engine import IntSmolLM2

    return model_from_program(program, IntSmolLM2)


def accepts(path: Path) -> bool:
    """A GGUF file holding this model: llama architecture with SmolLM2-135M's sizes
    (a generic llama-family GGUF is another model folder's)."""
    from opinfer.models.smollm2.gguf import read_index
    from opinfer.models.smollm2.spec import HIDDEN, VOCAB

    if not path.is_file():
        return False
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return False
    meta, tensors = read_index(path)
    embed = tensors.get("token_embd.weight")
    return (meta.get("general.architecture") == "llama" and meta.get("llama.embedding_length") == HIDDEN
            and meta.get("llama.block_count") == 30 and embed is not None and embed.shape == (HIDDEN, VOCAB))


def build_program(path: Path | None = None):
    """The integer program from the package's GGUF file, or from another copy of it."""
    from opinfer.models.smollm2 import engine, program

    if path is None:
        return program.default_program()
    return program.build_program(engine.IntSmolLM2.build(path))


def _trace_tokens(program, job):
    """A dispute trace's generated tokens from the engine the process already built (the
    one serving or re-executing jobs; none built: no hint, the generated positions run one
    at a time): the trace then runs its positions in blocks (opinfer/trace/blocked.py
    checks each token)."""
    from opinfer.models.smollm2.engine import default_model
    from opinfer.models.smollm2.program import engine_tokens

    if default_model.cache_info().currsize == 0:
        return None
    return engine_tokens(default_model())(program, job)


def _register_trace_tokens() -> None:
    from opinfer.models.smollm2.spec import NAME
    from opinfer.trace.hints import TOKEN_SOURCES

    TOKEN_SOURCES.setdefault(NAME, _trace_tokens)


_register_trace_tokens()


def release() -> None:
    from opinfer.models.smollm2 import engine as smollm2
    from opinfer.models.smollm2 import program as smollm2_program

    smollm2_program.default_program.cache_clear()
    smollm2.default_model.cache_clear()


#: The GGUF's tokenizer metadata (these keys, under their GGUF names), shipped for clients.
TOKENIZER_FILE = Path(__file__).with_name("tokenizer.json.gz")
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                  "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.chat_template")


def tokenizer_metadata() -> dict:
    return json.loads(shipped.read(TOKENIZER_FILE))


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The GGUF file's byte-level BPE tokenizer; its `chat_template` (the file's
    tokenizer.chat_template, ChatML) and `default_system_prompt` with it. Built
    from the copy of the file's tokenizer metadata shipped in this folder
    (opinfer/models/shipped.py), so no weights are needed."""
    from opinfer.models.smollm2.tokenizer import SmolLM2Tokenizer

    return SmolLM2Tokenizer.from_metadata(tokenizer_metadata())


def export_tokenizer() -> Path:
    from opinfer.models.smollm2.gguf import load_metadata

    meta = load_metadata()
    data = {k: meta[k] for k in TOKENIZER_KEYS}
    shipped.write(TOKENIZER_FILE, json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
    tokenizer.cache_clear()
    return TOKENIZER_FILE


def encode(text: str) -> list[int]:
    return tokenizer().encode_ordinary(text)


def chat_template() -> str:
    return tokenizer().chat_template
