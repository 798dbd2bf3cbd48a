"""Re-execution: a job's output root from the challenger's own engines.

An Executor answers two questions for one model:
- output_root(job): the cheap check, from the fast engine (no trace);
- program(): the integer program, to build the full trace when disputing.
Every registered model's executor is its Runtime (opinfer/models: the same
refusal rule and batching as a node's), with a refusal as Unverifiable.
The service picks an executor by the registry's model name, then before it
disputes it checks that the program's model root equals the registry's
(a challenger must never play a game with a program the contract does not
hold), and that the full trace disagrees with the leaf too (so a fast
engine that drifted from its program can never cost a bond)."""

from __future__ import annotations

from typing import Protocol

from challenger.errors import Unverifiable
from opinfer import models
from opinfer.errors import OpinferError
from opinfer.models import JobRefused, Runtime
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.program import Program
from opinfer.trace.outputs import tensor_root


class Executor(Protocol):
    name: str

    def output_root(self, job: JobInput) -> bytes: ...

    def output_roots(self, jobs: list[JobInput]) -> list[bytes | Exception]: ...

    def program(self) -> Program: ...


def _one(executor: Executor, job: JobInput) -> bytes:
    root = executor.output_roots([job])[0]
    if isinstance(root, Exception):
        raise root
    return root


class ModelExecutor(Runtime):
    """A registered model's runtime (engine built on first use, once)."""

    def output_roots(self, jobs: list[JobInput]) -> list[bytes | Exception]:
        # What an honest node refuses: the program has no trace for it either.
        return [Unverifiable(f"not {'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind} job: {r}")
                if isinstance(r, JobRefused) else r for r in super().output_roots(jobs)]

    def output_root(self, job: JobInput) -> bytes:
        return _one(self, job)


class ProgramExecutor:
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

    def output_roots(self, jobs: list[JobInput]) -> list[bytes | Exception]:
        """Roots of several jobs; a job that cannot run gets its exception instead."""
        out: list[bytes | Exception] = []
        for job in jobs:
            try:
                out.append(self.output_root(job))
            except Exception as exc:  # noqa: BLE001 - reported per job
                out.append(exc)
        return out

    def program(self) -> Program:
        return self._program


def default_executors() -> dict[str, Executor]:
    """An executor per registered model (each builds its engine on first use)."""
    return {spec.name: ModelExecutor(spec) for spec in models.specs()}


def program_executors(registered: dict[str, bytes], files=(), folder=None, log=None) -> dict[str, Executor]:
    """An executor per model of this library, from its built program file where there is one
    (`opinfer model build`; engine rebuilt from the file's integers, nothing calibrated): an
    explicit file must hold the registry's root for its name (`registered`: name -> root) or
    ConfigError; a model without a file falls back to building from its weight package on
    first use, as default_executors does."""
    from challenger.errors import ConfigError
    from opinfer.errors import CommitmentError
    from opinfer.models.built import find_program, read_meta

    out = default_executors()
    try:
        named = {read_meta(f)["name"]: f for f in files}
    except CommitmentError as exc:
        raise ConfigError(f"--program: {exc}") from None
    for name in set(named) - set(out):
        # a model known only by its program file (a llama-family file built elsewhere)
        from opinfer.models.llama.programfile import register_program_file

        try:
            register_program_file(named[name])
        except CommitmentError as exc:
            raise ConfigError(f"--program {named[name]}: {exc}") from None
    for spec in models.specs():
        root = registered.get(spec.name)
        path = named.get(spec.name) or (find_program(spec.name, root, (), folder) if root else None)
        if path is None:
            if log and root:
                log(f"no program file for {spec.name}: it is built from its weight package on first use")
            continue
        file_root = read_meta(path)["model_root"]
        if root is not None and file_root != "0x" + root.hex():
            if spec.name in named:
                raise ConfigError(f"{path} holds {spec.name} with model_root {file_root}, but the registry has "
                                  f"0x{root.hex()}: the challenger would re-execute another program")
            continue                          # another build in the folder: not the registered one
        try:
            out[spec.name] = ModelExecutor.from_file(spec, path, root, verify="digest")
        except CommitmentError as exc:
            raise ConfigError(str(exc)) from None
    return out
