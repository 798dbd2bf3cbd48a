"""A llama-family model known only by its built program file (`opinfer model build any.gguf`):
a node or a challenger that has the file but neither the GGUF nor a model folder serves it.

    spec = register_program_file("tiny-llama-0123abcd.npz")   # a chat ModelSpec of this process
    opinfer node run --model tiny-llama --program tiny-llama-0123abcd.npz ...

Everything comes from the file: the engine from its integers (built.model_from_program), the
refusal rule from the job limits committed in its root (vocabulary, positions, new tokens),
the program itself when a dispute needs it. Jobs are token ids (a tokenizer for such a file
is not carried: docs/models.md, "A llama-family GGUF model").
"""

from __future__ import annotations

import threading
from pathlib import Path

from opinfer.errors import CommitmentError
from opinfer.models.llama.parts import hooks_module, request, result, run_batch, sampler
from opinfer.models.spec import CHAT, JobRefused, ModelSpec
from opinfer.semantics.program import PER_POSITION


class ProgramFileParts:
    """A spec's hooks bound to one program file (the same hooks GGUFParts gives)."""

    def __init__(self, path):
        from opinfer.models.built import read_meta
        from opinfer.semantics.program import JobLimits

        self.path = str(path)
        meta = read_meta(path)
        self.limits = JobLimits.from_word(int(meta.get("limits", 0)))
        if meta["steps_mode"] != PER_POSITION or self.limits is None:
            raise CommitmentError(f"{path}: not a llama-family decoder program (no per-position job limits)")
        self.name, self.root = meta["name"], bytes.fromhex(meta["model_root"][2:])
        self._lock = threading.Lock()
        self._engine = self._program = None

    def check(self, job) -> None:
        from opinfer.models.llama.program import check_job

        if job.max_tokens < 1:
            raise JobRefused("a chat job needs max_tokens >= 1")
        try:
            check_job(job, self.limits.vocab, self.limits.positions, self.limits.max_new)
        except CommitmentError as exc:
            raise JobRefused(str(exc)) from None
        sampler(job)

    def from_program(self, program):
        from opinfer.models.llama.built import model_from_program

        return model_from_program(program)

    def load_engine(self):
        from opinfer.models.built import load_view

        with self._lock:
            if self._engine is None:
                self._engine = self.from_program(load_view(self.path, self.root))
            return self._engine

    def load_program(self):
        from opinfer.models.built import load_program

        with self._lock:
            if self._program is None:
                self._program = load_program(self.path, self.root, verify="digest")
            return self._program

    def decoder(self, prefill_tokens: int | None = None):
        from opinfer.models.llama.engine import Decoder

        return Decoder(prefill_tokens)

    def release(self) -> None:
        with self._lock:
            self._engine = self._program = None

    def hooks(self) -> dict:
        return {"check": self.check, "load_engine": self.load_engine, "run_batch": run_batch, "request": request,
                "result": result, "decoder": self.decoder, "load_program": self.load_program,
                "release": self.release, "from_program": self.from_program}

    def dimensions(self) -> int:
        """The hidden width: the token embeddings' columns (read from the file's first op)."""
        from opinfer.models.built import load_view

        view = load_view(self.path, self.root)
        return int(view.weights[view.ops[0].slots[2].ref & ((1 << 128) - 1)].shape[1])


def register_program_file(path, price_wei: int = 0) -> ModelSpec:
    """Register the model of a llama-family program file in this process's registry under the
    program's name (opinfer.models.unregister(name) drops it); the same file again is a no-op."""
    from opinfer import models

    parts = ProgramFileParts(path)
    module_name, parts = hooks_module(__name__, parts.name, parts.root.hex()[:12], path, parts)
    spec = ModelSpec(name=parts.name, kind=CHAT, vocab=parts.limits.vocab, dimensions=parts.dimensions(),
                     context=parts.limits.positions, hooks=module_name, price_wei=price_wei,
                     description=f"llama-family program file {Path(path).name}",
                     extra={"max_new_tokens": parts.limits.max_new, "program_file": str(path)})
    return models.register(spec)
