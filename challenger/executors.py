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
from opinfer.trace.jobinput import JobInput
from opinfer.trace.outputs import embedding_output, generation_output, tensor_root
from opinfer.trace.program import Program

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"


class Executor(Protocol):
    name: str

    def output_root(self, job: JobInput) -> bytes: ...

    def program(self) -> Program: ...


class _Lazy:
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

    def output_root(self, job: JobInput) -> bytes:
        if job.max_tokens or job.stop_sequences or len(job.tokens) > 512:
            raise Unverifiable("not an embedding job")
        vector = self.model().forward(np.asarray(job.tokens, dtype=np.int64))
        return tensor_root(embedding_output(vector))


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


class ProgramExecutor:
    """Any program run op by op (toy programs in tests and demos; also a
    reference for a model without a fast engine)."""

    def __init__(self, program: Program, name: str | None = None):
        self._program = program
        self.name = name or program.name

    def output_root(self, job: JobInput) -> bytes:
        return tensor_root(self._program.run(job)[-1])

    def program(self) -> Program:
        return self._program


def default_executors() -> dict[str, Executor]:
    return {MINILM: MiniLMExecutor(), SMOLLM2: SmolLM2Executor()}
