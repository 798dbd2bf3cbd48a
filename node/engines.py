"""The engines a node runs, by on-chain model name.

An engine maps a JobInput to its output tensor (the program's last tensor,
whose root the node signs) and a JSON payload for the coordinator:

- check(job) refuses a job that has no honest trace (the node must never
  sign a leaf it could not defend), raising BadJob;
- run(job) runs one job; run_many(jobs) runs several in one stacked pass,
  bit for bit the same as one at a time (MiniLM forward_batch, SmolLM2
  generate_many), returning per job either (output, payload) or the
  exception that job raised;
- program() is the integer program (what the dispute game checks), built on
  first use: the defender rebuilds disputed traces from it.

The real engines are loaded once per process and shared by every request
(and by every in-process node in tests): they are read-only after build."""

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


class _Engine:
    name = ""
    _program_lock = threading.Lock()

    def check(self, job: JobInput) -> None:  # pragma: no cover - overridden
        pass

    def run(self, job: JobInput) -> tuple[np.ndarray, dict]:
        self.check(job)
        result = self.run_many([job])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def run_many(self, jobs: list[JobInput]) -> list:
        out = []
        for job in jobs:
            try:
                self.check(job)
                out.append(self._run_one(job))
            except Exception as exc:  # noqa: BLE001 - reported per job
                out.append(exc)
        return out

    def program(self):
        with self._program_lock:
            if getattr(self, "_program", None) is None:
                self._program = self.load_program()
        return self._program


class EmbeddingEngine(_Engine):
    kind = "embedding"
    name = MINILM

    def __init__(self):
        from opinfer.engine.minilm import IntMiniLM

        self.model = IntMiniLM.build()
        self._program = None

    def check(self, job: JobInput) -> None:
        if job.max_tokens or job.stop_sequences:
            raise BadJob("an embedding job has max_tokens 0 and no stop sequences")
        if len(job.tokens) > MINILM_MAX_TOKENS:
            raise BadJob(f"{len(job.tokens)} tokens > {MINILM_MAX_TOKENS} positions of {MINILM}")
        if not job.tokens or max(job.tokens) >= len(self.model.word):
            raise BadJob(f"token ids must be in [0, {len(self.model.word)})")

    def _payload(self, vector) -> tuple[np.ndarray, dict]:
        return embedding_output(vector), {"embedding": [int(v) for v in vector]}

    def _run_one(self, job: JobInput):
        return self._payload(self.model.forward(np.asarray(job.tokens, dtype=np.int64)))

    def run_many(self, jobs: list[JobInput]) -> list:
        out: list = [None] * len(jobs)
        ok = []
        for k, job in enumerate(jobs):
            try:
                self.check(job)
                ok.append(k)
            except Exception as exc:  # noqa: BLE001
                out[k] = exc
        if ok:
            # One stacked pass: each vector is bit for bit forward(ids) alone.
            for k, vector in zip(ok, self.model.forward_batch([list(jobs[k].tokens) for k in ok])):
                out[k] = self._payload(vector)
        return out

    def load_program(self):
        from opinfer.engine.minilm_program import default_program

        return default_program()


class ChatEngine(_Engine):
    kind = "chat"
    name = SMOLLM2

    def __init__(self):
        from opinfer.engine.smollm2 import default_model

        self.model = default_model()
        self._program = None

    def check(self, job: JobInput) -> None:
        from opinfer.engine.smollm2_program import check_job

        if job.max_tokens < 1:
            raise BadJob("a chat job needs max_tokens >= 1")
        try:
            check_job(job)  # no honest trace, no signature
        except CommitmentError as exc:
            raise BadJob(str(exc)) from None

    def _request(self, job: JobInput) -> dict:
        from opinfer.engine.sampling import SamplingParams

        try:
            sampler = SamplingParams(job.temperature_milli, job.top_p_q, job.seed)
        except ValueError as exc:
            raise BadJob(str(exc)) from None
        return {"ids": list(job.tokens), "max_tokens": job.max_tokens, "sampler": sampler,
                "stop_sequences": job.stop_sequences}

    @staticmethod
    def _payload(job: JobInput, ids, reason) -> tuple[np.ndarray, dict]:
        try:
            output = generation_output(ids, reason, job.max_tokens)
        except CommitmentError as exc:
            raise BadJob(str(exc)) from None
        return output, {"ids": [int(t) for t in ids], "finish_reason": reason}

    def _run_one(self, job: JobInput):
        r = self._request(job)
        session = self.model.session(max_ctx=len(job.tokens) + job.max_tokens)
        ids, reason = session.generate(r["ids"], r["max_tokens"], sampler=r["sampler"],
                                       stop_sequences=r["stop_sequences"])
        return self._payload(job, ids, reason)

    def run_many(self, jobs: list[JobInput]) -> list:
        from opinfer.engine.smollm2 import generate_many

        out: list = [None] * len(jobs)
        ok, requests = [], []
        for k, job in enumerate(jobs):
            try:
                self.check(job)
                requests.append(self._request(job))
                ok.append(k)
            except Exception as exc:  # noqa: BLE001
                out[k] = exc
        if len(ok) == 1:
            out[ok[0]] = self._run_one(jobs[ok[0]])
        elif ok:
            # Continuous batching of the decode steps: the same tokens as each job alone.
            ctx = max(len(r["ids"]) + r["max_tokens"] for r in requests)
            for k, (ids, reason) in zip(ok, generate_many(self.model, requests, max_ctx=ctx)):
                try:
                    out[k] = self._payload(jobs[k], ids, reason)
                except Exception as exc:  # noqa: BLE001
                    out[k] = exc
        return out

    def load_program(self):
        from opinfer.engine.smollm2_program import default_program

        return default_program()


class ProgramEngine(_Engine):
    """Any integer program run op by op (the toy programs of tests and demos).
    The output is the program's last tensor; the payload lists its values."""

    kind = "program"

    def __init__(self, program, check=None):
        self._program = program
        self.name = program.name
        self._check = check

    def check(self, job: JobInput) -> None:
        if self._check:
            try:
                self._check(job)
            except CommitmentError as exc:
                raise BadJob(str(exc)) from None

    def _run_one(self, job: JobInput):
        out = self._program.run(job)[-1]
        return out, {"output": [int(v) for v in np.asarray(out).reshape(-1)]}

    def load_program(self):
        return self._program


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
