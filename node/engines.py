"""The engines a node runs, by on-chain model name.

Every model's engine is its Runtime (opinfer/models): the spec's refusal
rule, one batched engine pass, the integer program built on first use. The
node adds only its error: a refused job is BadJob (HTTP 400; the node must
never sign a leaf it could not defend).

An engine maps a JobInput to its output tensor (the program's last tensor,
whose root the node signs) and a JSON payload for the coordinator:
check(job), run(job), run_many(jobs) (bit for bit the same as one at a time;
per job (output, payload) or its exception), program() for the defender.

The real engines are loaded once per process and shared by every request
(and by every in-process node in tests): they are read-only after build."""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from node.errors import BadJob
from opinfer import models
from opinfer.errors import CommitmentError
from opinfer.models import JobRefused, Runtime
from opinfer.semantics.jobinput import JobInput


def _bad(exc: Exception) -> Exception:
    return BadJob(str(exc)) if isinstance(exc, JobRefused) else exc


class Engine(Runtime):
    """A registered model's runtime, refusals as BadJob."""

    def check(self, job: JobInput) -> None:
        try:
            super().check(job)
        except JobRefused as exc:
            raise BadJob(str(exc)) from None

    def run_many(self, jobs: list[JobInput]) -> list:
        return [_bad(r) for r in super().run_many(jobs)]


class ProgramEngine:
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

    def run(self, job: JobInput) -> tuple[np.ndarray, dict]:
        self.check(job)
        out = self._program.run(job)[-1]
        return out, {"output": [int(v) for v in np.asarray(out).reshape(-1)]}

    def run_many(self, jobs: list[JobInput]) -> list:
        out = []
        for job in jobs:
            try:
                out.append(self.run(job))
            except Exception as exc:  # noqa: BLE001 - reported per job
                out.append(exc)
        return out

    def program(self):
        return self._program


# name -> spec of every model this node can run (the library's registry)
ENGINES = {spec.name: spec for spec in models.specs()}
_lock = threading.Lock()


@lru_cache(maxsize=None)
def _engine(name: str) -> Engine:
    return Engine(ENGINES[name]).load()


def load(name: str) -> Engine:
    """The shared engine for a model name (built on first use)."""
    if name not in ENGINES:
        raise BadJob(f"this node runs no engine for model {name!r}")
    with _lock:  # one build at a time: SmolLM2 takes ~2.5 GB while it builds
        return _engine(name)


def adopt_program_files(paths) -> list[str]:
    """Models this library has no folder for, known by their built program files (a
    llama-family GGUF built elsewhere: opinfer/models/llama/programfile.py): registered in
    this process and served like any model. Returns their names."""
    from opinfer.models.built import read_meta
    from opinfer.models.llama.programfile import register_program_file

    names = []
    for path in paths:
        name = read_meta(path)["name"]
        if name not in ENGINES:
            ENGINES[name] = register_program_file(path)
            names.append(name)
    return names


@lru_cache(maxsize=None)
def _file_engine(name: str, path: str, root: bytes, verify: str) -> Engine:
    return Engine.from_file(ENGINES[name], path, root, verify=verify)


def load_file(name: str, path, root: bytes, verify: str = "digest") -> Engine:
    """The shared engine of a model from its built program file, whose root must be
    `root` (the registry's; CommitmentError otherwise): the engine is rebuilt from the
    program's integers, nothing is calibrated (opinfer/models/built.py)."""
    if name not in ENGINES:
        raise BadJob(f"this node runs no engine for model {name!r}")
    with _lock:
        return _file_engine(name, str(path), root, verify)
