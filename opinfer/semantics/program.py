"""Integer programs as the StepVerifier sees them: ops, weights, job limits
and model roots (docs/ops.md). A job's trace, its state roots and one-step
witnesses are opinfer/trace/state.py's.

A program is a template of P ops run once per step: once for an encoder
(steps_mode ONE_STEP), L + M - 1 times for a decoder that processes one
position per step (steps_mode PER_POSITION; L prompt tokens, M new tokens).
Op j of step s produces tensor 1 + s*P + j; tensor 0 is the job input T_0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from eth_abi import encode

from opinfer.errors import CommitmentError
from opinfer.semantics import merkle
from opinfer.semantics.jobinput import PENALTY_WORDS, VERSION, VERSION_PENALTIES, JobInput
from opinfer.semantics.ops import INPUT, PREV, SAME, WEIGHT, JobCtx, Op, width_for
from opinfer.semantics.tensor import TensorTree

ONE_STEP, PER_POSITION = 0, 1
LIMITED = 1 << 8            # the mode word carries job limits (JobLimits)
MODE_MASK = 0xFF
SEPARATOR = 0xFFFF
HEADER_WORDS = 10


@dataclass(frozen=True)
class JobLimits:
    """The limits a model's engine enforces on a job, committed in the model
    root (in the upper bits of the steps_mode word) so that StepVerifier.job_shape
    refuses a job outside them: the node that signed it loses at once, where a
    step would otherwise revert and the honest challenger lose on time.

    positions: L (one-step models) or L + max(M, 1) - 1 (per-position
    models) at most; vocab: every prompt token below it; max_temperature:
    temperature_milli at most; min_new <= M <= max_new; at most max_stop_words
    stop words."""

    positions: int
    vocab: int
    max_temperature: int = 0xFFFF
    min_new: int = 0
    max_new: int = 0xFFFF
    max_stop_words: int = 0xFFFF

    def word(self) -> int:
        for name, bits in (("positions", 16), ("vocab", 32), ("max_temperature", 16), ("min_new", 16),
                           ("max_new", 16), ("max_stop_words", 16)):
            if not 0 <= getattr(self, name) < 1 << bits:
                raise CommitmentError(f"job limit {name} out of range")
        return (LIMITED | self.positions << 16 | self.vocab << 32 | self.max_temperature << 64 | self.min_new << 80
                | self.max_new << 96 | self.max_stop_words << 112)

    @classmethod
    def from_word(cls, word: int) -> "JobLimits | None":
        if not word & LIMITED:
            return None
        f = lambda at, bits: (word >> at) & ((1 << bits) - 1)  # noqa: E731
        return cls(f(16, 16), f(32, 32), f(64, 16), f(80, 16), f(96, 16), f(112, 16))


def job_shape(mode_word: int, ops_per_step: int, data: bytes) -> tuple[bool, int, int]:
    """Twin of StepVerifier.job_shape (without the model-root check and T_0's
    root): (well formed, number of ops, packed job L | tokens_at << 32 | steps << 64).
    Well formed: the JobInput layout (version 1 or 2, lengths that add up, prompt
    tokens below 0xFFFF, stop sequences non-empty and terminated) and, for a
    limited model, the JobLimits in the mode word."""
    if len(data) < 2 * HEADER_WORDS or len(data) % 2:
        return False, 0, 0
    w = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    tokens, stops = w[1], w[9]
    at = HEADER_WORDS + stops                      # tokens_at
    if w[0] == VERSION_PENALTIES:                  # presence, frequency, B and B (id, bias) pairs
        if len(w) < at + PENALTY_WORDS:
            return False, 0, 0
        at += PENALTY_WORDS + 2 * w[at + 2]
    if w[0] not in (VERSION, VERSION_PENALTIES) or tokens == 0 or len(w) != at + tokens:
        return False, 0, 0
    stop_words, prompt = w[HEADER_WORDS:HEADER_WORDS + stops], w[at:]
    if SEPARATOR in prompt:
        return False, 0, 0
    if stop_words and (stop_words[0] == SEPARATOR or stop_words[-1] != SEPARATOR
                       or any(a == b == SEPARATOR for a, b in zip(stop_words, stop_words[1:]))):
        return False, 0, 0
    mode = mode_word & MODE_MASK
    steps = tokens + max(w[2], 1) - 1 if mode == PER_POSITION else 1
    limits = JobLimits.from_word(mode_word)
    if limits is not None:
        positions = steps if mode == PER_POSITION else tokens
        if (positions > limits.positions or max(prompt) >= limits.vocab or w[3] > limits.max_temperature
                or not limits.min_new <= w[2] <= limits.max_new or stops > limits.max_stop_words):
            return False, 0, 0
    return True, steps * ops_per_step, tokens | at << 32 | steps << 64


def value_bytes(row: np.ndarray) -> tuple[int, bytes]:
    """An unpacked row as the witness carries it: (e, values as e-byte
    big-endian two's complement) for the narrowest e in 1, 2, 4, 8 that holds
    them (StepVerifier widens them back to the committed words)."""
    row = np.asarray(row, dtype=np.int64).reshape(-1)
    e = width_for(row)
    return e, row.astype(f">i{e}").tobytes()


def job_steps(steps_mode: int, job: JobInput) -> int:
    if steps_mode == ONE_STEP:
        return 1
    return len(job.tokens) + max(job.max_tokens, 1) - 1


@dataclass
class Program:
    """A model: a template of ops plus the weights they read."""

    ops: list[Op]
    weights: list[np.ndarray]
    widths: list[int]
    steps_mode: int = ONE_STEP
    name: str = "program"
    limits: JobLimits | None = None

    def __post_init__(self):
        if len(self.widths) != len(self.weights):
            raise CommitmentError("one width per weight tensor")
        self.weights = [np.asarray(w, dtype=np.int64).reshape(w.shape if np.ndim(w) == 2 else (1, -1))
                        for w in self.weights]

    @cached_property
    def weight_trees(self) -> list[TensorTree]:
        return [TensorTree.build(w, width) for w, width in zip(self.weights, self.widths)]

    @cached_property
    def program_tree(self) -> list[list[bytes]]:
        return merkle.levels([merkle.keccak(op.encode()) for op in self.ops])

    @cached_property
    def weights_tree(self) -> list[list[bytes]]:
        return merkle.levels([t.root for t in self.weight_trees])

    @property
    def num_ops(self) -> int:
        """Ops per step (P): what the registry stores."""
        return len(self.ops)

    @property
    def mode_word(self) -> int:
        """The steps_mode word the model root commits to: the mode, and the job
        limits above it when the model has any."""
        return self.steps_mode | (self.limits.word() if self.limits else 0)

    def check_job(self, job: JobInput) -> None:
        """Raise CommitmentError for a job StepVerifier.job_shape would refuse."""
        ok, _, _ = job_shape(self.mode_word, self.num_ops, job.to_bytes())
        if not ok:
            raise CommitmentError(f"job outside the limits of {self.name}: {self.limits}")

    @cached_property
    def model_root(self) -> bytes:
        return merkle.keccak(encode(
            ["bytes32", "bytes32", "uint256", "uint256", "uint256"],
            [self.program_tree[-1][0], self.weights_tree[-1][0], self.num_ops, len(self.weights), self.mode_word],
        ))

    def model_header(self) -> bytes:
        """What a challenge passes to fix the job's length: the model root's preimage."""
        return encode(["bytes32", "bytes32", "uint256", "uint256"],
                      [self.program_tree[-1][0], self.weights_tree[-1][0], len(self.weights), self.mode_word])

    def header(self, op_index: int) -> bytes:
        """What the verifier needs to prove op `op_index` (of any step) against the model root."""
        j = op_index % self.num_ops
        return encode(
            ["bytes32", "bytes32", "uint256", "uint256", "bytes", "bytes32[]"],
            [self.program_tree[-1][0], self.weights_tree[-1][0], len(self.weights), self.mode_word,
             self.ops[j].encode(), merkle.proof(self.program_tree, j)],
        )

    def job_ops(self, job: JobInput) -> int:
        return self.num_ops * job_steps(self.steps_mode, job)

    def ctx(self, job: JobInput, op_index: int) -> JobCtx:
        steps = job_steps(self.steps_mode, job)
        return JobCtx(tokens=len(job.tokens), step=op_index // self.num_ops, tokens_at=job.tokens_at,
                      gen=max(steps + 1 - len(job.tokens), 0))

    def tensor_index(self, slot_ref: int, op_index: int) -> int:
        """Index in the state of the tensor a state slot names (op `op_index` reads it)."""
        kind, idx = slot_ref >> 128, slot_ref & ((1 << 128) - 1)
        base = op_index - op_index % self.num_ops
        if kind == INPUT:
            return 0
        if kind == SAME:
            return 1 + base + idx
        if kind == PREV and base >= self.num_ops:
            return 1 + base - self.num_ops + idx
        raise CommitmentError(f"op {op_index} reads a tensor that does not exist (ref {slot_ref:#x})")

    def run(self, job: JobInput, on_op=None) -> list[np.ndarray]:
        """All tensors of the trace: [T_0, out_0, ..., out_{N-1}]. `on_op(i, out)`
        may replace an op's output (used to build dishonest traces in tests)."""
        tensors = [job.tensor()]
        for i in range(self.job_ops(job)):
            op = self.ops[i % self.num_ops]
            out = op.run(self.slot_tensors(op, i, tensors), self.ctx(job, i))
            tensors.append(on_op(i, out) if on_op else out)
        return tensors

    def run_step(self, job: JobInput, step: int, carry: dict, t0: np.ndarray | None = None,
                 on_op=None) -> list[np.ndarray]:
        """Every output of one step of a per-position program, from the previous step's
        carried tensors (`carry`: template op index -> its output; a missing one reads as
        None, as a previous-step slot at step 0 does). `on_op(i, out)` as in run."""
        t0 = job.tensor() if t0 is None else t0
        outs: list[np.ndarray] = []
        for j, op in enumerate(self.ops):
            i = step * self.num_ops + j
            ins = []
            for s in op.slots:
                kind, idx = s.ref >> 128, s.ref & ((1 << 128) - 1)
                ins.append(t0 if kind == INPUT else outs[idx] if kind == SAME
                           else self.weights[idx] if kind == WEIGHT else carry.get(idx))
            out = op.run(ins, self.ctx(job, i))
            outs.append(on_op(i, out) if on_op else out)
        return outs

    def slot_tensors(self, op: Op, op_index: int, tensors: list[np.ndarray]) -> list[np.ndarray | None]:
        """The tensors op `op_index` reads; None for a previous-step slot at step 0."""
        out = []
        for s in op.slots:
            if s.ref >> 128 == WEIGHT:
                out.append(self.weights[s.ref & ((1 << 128) - 1)])
            elif s.ref >> 128 == PREV and op_index < self.num_ops:
                out.append(None)
            else:
                out.append(tensors[self.tensor_index(s.ref, op_index)])
        return out
