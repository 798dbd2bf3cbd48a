"""SmolLM2-135M-Instruct's parts: refusal rule, engine, program, tokenizer and chat template."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from opinfer.errors import CommitmentError
from opinfer.models import shipped
from opinfer.models.spec import JobRefused


def sampler(job):
    """The job's sampling parameters; JobRefused when they are out of range."""
    from opinfer.engine.sampling import SamplingParams

    try:
        return SamplingParams.of_job(job)   # penalties and logit bias included
    except ValueError as exc:
        raise JobRefused(str(exc)) from None


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


def request(job) -> dict:
    """A checked job as a generation request (smollm2.Decoder, Session.generate, generate_many):
    the node's continuous batching (node/scheduler.py) and run_batch both start from it."""
    return {"ids": list(job.tokens), "max_tokens": job.max_tokens, "sampler": sampler(job),
            "stop_sequences": job.stop_sequences}


def result(job, ids, reason):
    """(output tensor, payload) of a finished generation, or the JobRefused it cannot be committed as."""
    from opinfer.trace.outputs import generation_output

    try:
        output = generation_output(ids, reason, job.max_tokens)
    except CommitmentError as exc:
        return JobRefused(str(exc))
    return output, {"ids": [int(t) for t in ids], "finish_reason": reason}


def run_batch(engine, jobs: list) -> list:
    """One job: its own session. Several: continuous batching of the decode
    steps (generate_many), the same tokens as each job alone."""
    from opinfer.models.smollm2.engine import generate_many

    if len(jobs) == 1:
        job, r = jobs[0], request(jobs[0])
        session = engine.session(max_ctx=len(job.tokens) + job.max_tokens)
        ids, reason = session.generate(r["ids"], r["max_tokens"], sampler=r["sampler"],
                                       stop_sequences=r["stop_sequences"])
        return [result(job, ids, reason)]
    requests = [request(job) for job in jobs]
    ctx = max(len(r["ids"]) + r["max_tokens"] for r in requests)
    return [result(job, ids, reason) for job, (ids, reason) in zip(jobs, generate_many(engine, requests, max_ctx=ctx))]


def decoder(prefill_tokens: int | None = None):
    """A continuous-batching decoder over this model's engine (the node's scheduler drives it)."""
    from opinfer.models.smollm2.engine import Decoder

    return Decoder(prefill_tokens)


def load_program():
    from opinfer.models.smollm2.program import default_program

    return default_program()


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
