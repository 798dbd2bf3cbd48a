"""One runtime for every model: the node and the challenger run jobs through it.

A Runtime refuses what its spec refuses, batches the rest into one engine
pass (bit for bit the same as one job at a time: tests/unit/test_batch_determinism.py)
and builds the engine and the integer program once, on first use. The node
(node/engines.py) and the challenger (challenger/executors.py) only map a
refusal onto their own errors."""

from __future__ import annotations

import threading

from opinfer.errors import CommitmentError
from opinfer.models.spec import JobRefused, ModelSpec


class Runtime:
    # One build at a time in a process: a SmolLM2 build takes ~2.5 GB while it runs.
    _build_lock = threading.Lock()

    def __init__(self, spec: ModelSpec, engine=None, program_loader=None):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self._engine = engine
        self._program = None
        self._program_loader = program_loader or spec.load_program

    @classmethod
    def from_file(cls, spec: ModelSpec, path, expected_root: bytes | None = None, verify: str = "digest",
                  keep_program: bool | None = None):  # keep_program default: files under 64 MiB
        """A runtime whose engine and program come from a built program file
        (opinfer/models/built.py): the file's root must be `expected_root` (the
        registry's), the engine is rebuilt from the program's integers (no
        calibration; parts.from_program). A small program (a file under 64 MiB) is
        kept; a large one (a chat model's: 1.1 GB as int64) is never
        widened at start: from_program gets a ProgramView of the stored widths,
        and the program is read from the file when a dispute needs it."""
        from pathlib import Path

        from opinfer.models.built import load_program, load_view

        keep = keep_program if keep_program is not None else Path(path).stat().st_size < 64 << 20
        # A kept program is the engine's source too; a large one's engine is built from the
        # stored widths (a family's from_program widens what it keeps) and the program read
        # again, widened, only when a dispute needs it.
        source = load_program(path, expected_root, verify=verify) if keep else \
            load_view(path, expected_root, verify=verify)
        if source.name != spec.name:
            raise CommitmentError(f"{path} holds the program of {source.name!r}, not of {spec.name!r}")
        root = source.model_root
        runtime = cls(spec, engine=spec.parts.from_program(source),
                      program_loader=lambda: load_program(path, root, verify=verify))
        runtime.program_file = str(path)
        runtime._program = source if keep else None
        return runtime

    @property
    def engine(self):
        """The fast engine, built on first use."""
        if self._engine is None:
            with self._build_lock:
                if self._engine is None:
                    self._engine = self.spec.load_engine()
        return self._engine

    def load(self) -> "Runtime":
        """Build the engine now (a node loads before it announces itself)."""
        self.engine  # noqa: B018 - builds it
        return self

    def program(self):
        with self._build_lock:
            if self._program is None:
                self._program = self._program_loader()
        return self._program

    def check(self, job) -> None:
        self.spec.check(job)

    def run(self, job):
        """(output tensor, payload) of one job; a refusal raises."""
        self.check(job)
        result = self.run_many([job])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def run_many(self, jobs: list) -> list:
        """Per job (output tensor, payload) or the exception it raised (JobRefused when refused)."""
        out: list = [None] * len(jobs)
        ok = []
        for k, job in enumerate(jobs):
            try:
                self.check(job)
                ok.append(k)
            except Exception as exc:  # noqa: BLE001 - reported per job
                out[k] = exc
        if ok:
            for k, result in zip(ok, self.spec.run_batch(self.engine, [jobs[k] for k in ok])):
                out[k] = result
        return out

    def output_roots(self, jobs: list) -> list:
        """Per job its output root (what a leaf commits to) or its exception."""
        from opinfer.trace.outputs import tensor_root

        return [r if isinstance(r, Exception) else tensor_root(r[0]) for r in self.run_many(jobs)]


__all__ = ["JobRefused", "Runtime"]
