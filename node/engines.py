"""The engines a node runs, by on-chain model name.

An engine maps a JobInput to its output tensor (the program's last tensor,
whose root the node signs) and a JSON payload for the coordinator. Both
engines are loaded once per process and shared by every request (and by
every in-process node in tests): they are read-only after build."""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from node.errors import BadJob
from opinfer.errors import CommitmentError
from opinfer.trace.jobinput import JobInput
from opinfer.trace.outputs import embedding_output, generation_output

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"
MINILM_MAX_TOKENS = 512     # BERT position table
SMOLLM2_MAX_CTX = 2048


class EmbeddingEngine:
    kind = "embedding"

    def __init__(self):
        from opinfer.engine.minilm import IntMiniLM

        self.model = IntMiniLM.build()

    def run(self, job: JobInput) -> tuple[np.ndarray, dict]:
        if job.max_tokens or job.stop_sequences:
            raise BadJob("an embedding job has max_tokens 0 and no stop sequences")
        if len(job.tokens) > MINILM_MAX_TOKENS:
            raise BadJob(f"{len(job.tokens)} tokens > {MINILM_MAX_TOKENS} positions of {MINILM}")
        vector = self.model.forward(np.asarray(job.tokens, dtype=np.int64))
        return embedding_output(vector), {"embedding": [int(v) for v in vector]}


class ChatEngine:
    kind = "chat"

    def __init__(self):
        from opinfer.engine.smollm2 import default_model

        self.model = default_model()

    def run(self, job: JobInput) -> tuple[np.ndarray, dict]:
        from opinfer.engine.sampling import SamplingParams

        if job.max_tokens < 1:
            raise BadJob("a chat job needs max_tokens >= 1")
        if len(job.tokens) + job.max_tokens > SMOLLM2_MAX_CTX:
            raise BadJob(f"prompt + max_tokens = {len(job.tokens) + job.max_tokens} > context {SMOLLM2_MAX_CTX}")
        try:
            sampler = SamplingParams(job.temperature_milli, job.top_p_q, job.seed)
        except ValueError as exc:
            raise BadJob(str(exc)) from None
        session = self.model.session(max_ctx=len(job.tokens) + job.max_tokens)
        ids, reason = session.generate(list(job.tokens), job.max_tokens, sampler=sampler,
                                       stop_sequences=job.stop_sequences)
        try:
            output = generation_output(ids, reason, job.max_tokens)
        except CommitmentError as exc:
            raise BadJob(str(exc)) from None
        return output, {"ids": [int(t) for t in ids], "finish_reason": reason}


ENGINES = {MINILM: EmbeddingEngine, SMOLLM2: ChatEngine}
_lock = threading.Lock()


@lru_cache(maxsize=None)
def _engine(name: str):
    return ENGINES[name]()


def load(name: str):
    """The shared engine for a model name (built on first use)."""
    if name not in ENGINES:
        raise BadJob(f"this node runs no engine for model {name!r}")
    with _lock:  # one build at a time: SmolLM2 takes ~2.5 GB while it builds
        return _engine(name)
