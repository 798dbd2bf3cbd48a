"""Re-execution: a job's output root from the challenger's own engines.

An Executor answers two questions for one model:
- output_root(job): the cheap check, from the fast engine (no trace);
- program(): the integer program, to build the full trace when disputing.
The service picks an executor by the registry's model name, then before it
disputes it checks that the program's model root equals the registry's
(a challenger must never play a game with a program the contract does not
hold), and that the full trace disagrees with the leaf too (so a fast
engine that drifted from its program can never cost a bond)."""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from challenger.errors import Unverifiable
from opinfer.errors import OpinferError
from opinfer.trace.jobinput import JobInput
from opinfer.trace.outputs import embedding_output, generation_output, tensor_root
from opinfer.trace.program import Program

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"


class Executor(Protocol):
    name: str

    def output_root(self, job: JobInput) -> bytes: ...

    def output_roots(self, jobs: list[JobInput]) -> list[bytes | Exception]: ...

    def program(self) -> Program: ...


class _PerJob:
    def output_roots(self, jobs: list[JobInput]) -> list[bytes | Exception]:
        """Roots of several jobs; a job that cannot run gets its exception instead."""
        out: list[bytes | Exception] = []
        for job in jobs:
            try:
                out.append(self.output_root(job))
            except Exception as exc:  # noqa: BLE001 - reported per job
                out.append(exc)
        return out


class _Lazy(_PerJob):
    """Builds its model on first use, once, under a lock (a SmolLM2 build
    takes gigabytes: never two at a time)."""

    _build_lock = threading.Lock()

    def __init__(self):
        self._model = None
        self._program = None

    def model(self):
        with self._build_lock:
            if self._model is None:
                self._model = self.load_model()
        return self._model

    def program(self) -> Program:
        with self._build_lock:
            if self._program is None:
                self._program = self.load_program()
        return self._program


class MiniLMExecutor(_Lazy):
    name = MINILM

    def load_model(self):
        from opinfer.engine.minilm import IntMiniLM
        return IntMiniLM.build()

    def load_program(self) -> Program:
        from opinfer.engine.minilm_program import default_program
        return default_program()

    def _refusal(self, job: JobInput) -> Unverifiable | None:
        # What an honest node refuses (node/engines.py): the program has no trace for it either.
        if job.max_tokens or job.stop_sequences or len(job.tokens) > 512 or max(job.tokens) >= len(self.model().word):
            return Unverifiable("not an embedding job")
        return None

    def output_root(self, job: JobInput) -> bytes:
        root = self.output_roots([job])[0]
        if isinstance(root, Exception):
            raise root
        return root

    def output_roots(self, jobs: list[JobInput]) -> list[bytes | Exception]:
        # One stacked pass (bit-identical to one job at a time; engine's
        # batch-determinism tests): several times the throughput on small jobs.
        out: list[bytes | Exception] = [self._refusal(job) or b"" for job in jobs]
        ok = [k for k, r in enumerate(out) if r == b""]
        if ok:
            for k, vector in zip(ok, self.model().forward_batch([list(jobs[k].tokens) for k in ok])):
                out[k] = tensor_root(embedding_output(vector))
        return out


class SmolLM2Executor(_Lazy):
    name = SMOLLM2

    def load_model(self):
        from opinfer.engine.smollm2 import default_model
        return default_model()

    def load_program(self) -> Program:
        from opinfer.engine.smollm2_program import default_program
        return default_program()

    def output_root(self, job: JobInput) -> bytes:
        from opinfer.engine.sampling import SamplingParams
        from opinfer.engine.smollm2_program import check_job

        try:
            check_job(job)
            sampler = SamplingParams(job.temperature_milli, job.top_p_q, job.seed)
        except Exception as exc:  # noqa: BLE001 - any refusal: the job has no honest trace
            raise Unverifiable(f"not a chat job: {exc}") from None
        session = self.model().session(max_ctx=len(job.tokens) + job.max_tokens)
        ids, reason = session.generate(list(job.tokens), job.max_tokens, sampler=sampler,
                                       stop_sequences=job.stop_sequences)
        return tensor_root(generation_output(ids, reason, job.max_tokens))

    def output_roots(self, jobs: list[JobInput]) -> list[bytes | Exception]:
        # Continuous batching of the decode steps (generate_many): the same
        # tokens as each job alone, with the weights read once per step for all.
        from opinfer.engine.sampling import SamplingParams
        from opinfer.engine.smollm2 import generate_many
        from opinfer.engine.smollm2_program import check_job

        out: list[bytes | Exception] = []
        requests, ok = [], []
        for k, job in enumerate(jobs):
            try:
                check_job(job)
                sampler = SamplingParams(job.temperature_milli, job.top_p_q, job.seed)
            except Exception as exc:  # noqa: BLE001
                out.append(Unverifiable(f"not a chat job: {exc}"))
                continue
            out.append(b"")
            ok.append(k)
            requests.append({"ids": list(job.tokens), "max_tokens": job.max_tokens, "sampler": sampler,
                             "stop_sequences": job.stop_sequences})
        if requests:
            ctx = max(len(r["ids"]) + r["max_tokens"] for r in requests)
            for k, (ids, reason) in zip(ok, generate_many(self.model(), requests, max_ctx=ctx)):
                try:
                    out[k] = tensor_root(generation_output(ids, reason, jobs[k].max_tokens))
                except Exception as exc:  # noqa: BLE001
                    out[k] = exc
        return out


class ProgramExecutor(_PerJob):
    """Any program run op by op (toy programs in tests and demos; also a
    reference for a model without a fast engine)."""

    def __init__(self, program: Program, name: str | None = None):
        self._program = program
        self.name = name or program.name

    def output_root(self, job: JobInput) -> bytes:
        try:
            self._program.check_job(job)      # what the model root's committed limits refuse
        except OpinferError as exc:
            raise Unverifiable(str(exc)) from None
        return tensor_root(self._program.run(job)[-1])

    def program(self) -> Program:
        return self._program


def default_executors() -> dict[str, Executor]:
    return {MINILM: MiniLMExecutor(), SMOLLM2: SmolLM2Executor()}
