"""A decoder job's trace in bounded memory, with incremental cache roots.

A decoder's KV caches are tensors that every step extends by one row (K)
or one column (V^T), so hashing each step's caches afresh costs O(steps^2)
and keeping every tensor costs as much memory. This trace instead:

- hashes each cache incrementally: a K cache keeps its row roots in an
  append-only Merkle tree; a V^T cache keeps, per row, the hashes of its
  completed chunks and the values of the open one (AppendTree);
- keeps only the tensor roots (what state roots are made of), each step's
  small carried outputs (NEXT, GEN) and each cache's appended entries;
- rebuilds a step's tensors on demand (a witness or a tree for the game) by
  replaying that one step from the carried state, and checks the replayed
  roots against the stored ones.

It exposes the same interface as state.Trace (tensors[i], trees[i],
state roots and proofs, witness).

An honest trace (no on_op) is built in blocks of positions (opinfer.trace.blocked:
the row-wise ops over many rows at once, every root hashed natively), fed the
generated tokens by the model's fast engine when one is registered
(opinfer.trace.hints: a hint the build checks against the program's own NEXT); its
roots are the step-by-step build's bit for bit (tests/unit/test_blocked_trace.py).
The state tree over all tensor roots is built natively too (fasthash).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.semantics import merkle
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.ops import APPEND, PREV
from opinfer.semantics.program import Program, job_steps
from opinfer.semantics.tensor import CHUNK, TensorTree, _words, row_root, zero_chunk, zero_row_root
from opinfer.trace import blocked, fasthash
from opinfer.trace.hints import generated_tokens
from opinfer.trace.state import Trace

MASK128 = (1 << 128) - 1
STEPS_KEPT = 3          # replayed steps kept in memory
TREES_KEPT = 64         # tensor trees kept in memory


class Leaves:
    """Tensor roots as one [n, 32] array (2 million bytes objects would take 150 MB more)."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr

    def __len__(self) -> int:
        return len(self.arr)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [bytes(x) for x in self.arr[i]]
        return self.arr[i].tobytes()

    def __setitem__(self, i: int, value: bytes) -> None:
        self.arr[i] = np.frombuffer(value, dtype=np.uint8)

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __iter__(self):
        return (x.tobytes() for x in self.arr)

    def copy(self) -> "Leaves":
        return Leaves(self.arr.copy())


class _Level:
    def __init__(self, arr: np.ndarray):
        self.arr = arr

    def __len__(self) -> int:
        return len(self.arr)

    def __getitem__(self, i: int) -> bytes:
        return self.arr[i].tobytes()


def _compact(a: np.ndarray) -> np.ndarray:
    """The narrowest of int16 and int32 that holds the values (the caches' rows and the
    carried GEN rows: a 4,096-position trace keeps 4,096 of each), else as it is."""
    if a.size and a.dtype == np.int64:
        for t in (np.int16, np.int32):
            if a.min() >= np.iinfo(t).min and a.max() <= np.iinfo(t).max:
                return a.astype(t)
    return a


class AppendTree:
    """An append-only list of leaves with the root of the list padded (with
    `pad`) to a power of two, as merkle.levels builds it: O(1) hashes per
    append (amortised), O(log n) per root."""

    def __init__(self, pad: bytes):
        self.pad = pad
        self.levels: list[list[bytes]] = [[]]
        self.zeros = [pad]

    def __len__(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        self.levels[0].append(leaf)
        k = 0
        while len(self.levels[k]) % 2 == 0:
            if len(self.levels) == k + 1:
                self.levels.append([])
            self.levels[k + 1].append(merkle.keccak(self.levels[k][-2] + self.levels[k][-1]))
            k += 1

    def _zero(self, k: int) -> bytes:
        while len(self.zeros) <= k:
            self.zeros.append(merkle.keccak(self.zeros[-1] + self.zeros[-1]))
        return self.zeros[k]

    def root(self, tail: bytes | None = None) -> bytes:
        """Root over the leaves plus `tail` (one more leaf, not stored)."""
        n = len(self)
        m = n + (tail is not None)
        if m == 0:
            raise CommitmentError("a Merkle tree needs at least one leaf")
        cur = tail if tail is not None else self.levels[0][n - 1]
        idx = m - 1
        for k in range(merkle.ceil_log2(m)):
            cur = merkle.keccak(cur + self._zero(k)) if idx % 2 == 0 else merkle.keccak(self.levels[k][idx - 1] + cur)
            idx >>= 1
        return cur


class _RowsCache:
    """Incremental root of a K cache [s+1, W]: one row appended per step."""

    def __init__(self, width: int):
        self.width = width
        self.rows = AppendTree(zero_row_root(width))

    def reset(self, tensor: np.ndarray) -> None:
        self.rows = AppendTree(zero_row_root(self.width))
        for row in tensor:
            self.rows.append(row_root(row))

    def append(self, row: np.ndarray) -> None:
        self.rows.append(row_root(row))

    def root(self) -> bytes:
        return self.rows.root()


class _ColsCache:
    """Incremental root of a V^T cache [W, s+1]: one column appended per step.
    Per row: an AppendTree of completed chunk hashes and the open chunk's values."""

    def __init__(self, height: int):
        self.height = height
        self.reset(np.zeros((height, 0), dtype=np.int64))

    def reset(self, tensor: np.ndarray) -> None:
        n = tensor.shape[1]
        full = n - n % CHUNK
        self.chunks = [AppendTree(zero_chunk()) for _ in range(self.height)]
        for start in range(0, full, CHUNK):
            data = _words(tensor[:, start:start + CHUNK])
            for r in range(self.height):
                self.chunks[r].append(merkle.keccak(data[r * 32 * CHUNK:(r + 1) * 32 * CHUNK]))
        self.open = tensor[:, full:].copy()
        self.cols = n

    def append(self, col: np.ndarray) -> None:
        self.open = np.concatenate([self.open, col.reshape(-1, 1)], axis=1)
        self.cols += 1
        if self.open.shape[1] == CHUNK:
            data = _words(self.open)
            for r in range(self.height):
                self.chunks[r].append(merkle.keccak(data[r * 32 * CHUNK:(r + 1) * 32 * CHUNK]))
            self.open = self.open[:, :0]

    def root(self) -> bytes:
        tails: list[bytes | None] = [None] * self.height
        if self.open.shape[1]:
            padded = np.zeros((self.height, CHUNK), dtype=np.int64)
            padded[:, :self.open.shape[1]] = self.open
            data = _words(padded)
            tails = [merkle.keccak(data[r * 32 * CHUNK:(r + 1) * 32 * CHUNK]) for r in range(self.height)]
        rows = [tree.root(tail) for tree, tail in zip(self.chunks, tails)]
        return merkle.root(rows, pad=zero_row_root(self.cols))


class _LazyTensors:
    def __init__(self, trace: "DecoderTrace"):
        self.trace = trace

    def __len__(self) -> int:
        return self.trace.n + 1

    def __getitem__(self, i: int) -> np.ndarray:
        i = range(len(self))[i]
        if i == 0:
            return self.trace.t0
        step, j = divmod(i - 1, self.trace.program.num_ops)
        return self.trace.replay(step)[j]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _LazyTrees:
    def __init__(self, trace: "DecoderTrace"):
        self.trace = trace
        self.kept: OrderedDict[int, TensorTree] = OrderedDict()

    def __len__(self) -> int:
        return self.trace.n + 1

    def __getitem__(self, i: int) -> TensorTree:
        i = range(len(self))[i]
        if i not in self.kept:
            tree = TensorTree.build(self.trace.tensors[i])
            if tree.root != self.trace._state_leaves[i]:
                raise CommitmentError(f"replayed tensor {i} does not match its recorded root")
            self.kept[i] = tree
            if len(self.kept) > TREES_KEPT:
                self.kept.popitem(last=False)
        self.kept.move_to_end(i)
        return self.kept[i]


class DecoderTrace(Trace):
    """Trace of a decoder (steps_mode PER_POSITION) job; see the module docstring."""

    def __init__(self, program: Program, job: JobInput, on_op=None, replace: dict | None = None, tokens=None):
        self.program, self.job = program, job
        self.on_op = on_op
        self.replace = dict(replace or {})        # tensor index -> tensor (patched traces)
        self.t0 = job.tensor()
        p = program
        self.steps = job_steps(p.steps_mode, job)
        self.carried = sorted({s.ref & MASK128 for op in p.ops for s in op.slots if s.ref >> 128 == PREV})
        self.caches = [j for j in self.carried if p.ops[j].code == APPEND]
        self.rebased: dict[int, dict[int, np.ndarray]] = {j: {} for j in self.caches}  # not a pure append
        built = None
        if on_op is None and not self.replace:
            if tokens is None and len(job.tokens) < self.steps:
                # the engine generates while the prompt's positions are built (its native
                # steps release the GIL): the hint is waited for at the first generated position
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(1, thread_name_prefix="trace-tokens") as pool:
                    future = pool.submit(generated_tokens, program, job)
                    built = self._blocked(future)
            else:
                built = self._blocked(tokens)
        if built is not None:
            self.small = {j: [_compact(x) for x in built.small[j]] for j in self.carried if j not in self.caches}
            self.cache_rows = {j: _compact(built.cache_rows[j]) for j in self.caches}
            self._state_leaves = Leaves(built.leaves)
        else:
            self._build_by_steps()
        self._init_caches()

    def _blocked(self, tokens):
        try:
            return blocked.build(self.program, self.job, tokens)
        except blocked.Unsupported:
            return None

    def _init_caches(self) -> None:
        self._full_levels = None
        self._steps_kept: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self.tensors = _LazyTensors(self)
        self.trees = _LazyTrees(self)

    def __getstate__(self) -> dict:
        """What a restart needs (node/defender.TraceFiles): no replayed steps, trees or state tree."""
        state = dict(self.__dict__)
        for key in ("_full_levels", "_steps_kept", "tensors", "trees"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_caches()

    def _build_by_steps(self) -> None:
        """Step by step, as the program runs (with on_op, or a template blocked does not handle)."""
        p, job = self.program, self.job
        self.small: dict[int, list[np.ndarray]] = {j: [] for j in self.carried if j not in self.caches}
        entries: dict[int, list[np.ndarray]] = {j: [] for j in self.caches}
        incremental = {}
        for j in self.caches:
            ctx = p.ctx(job, j)
            op = p.ops[j]
            incremental[j] = (_ColsCache(op.shape(ctx)[0]) if op.params[0] else _RowsCache(op.shape(ctx)[1]))
        roots = [fasthash.tensor_root(self.t0)]
        carry: dict[int, np.ndarray] = {}
        for step in range(self.steps):
            outs, shown = self._run_step(step, carry)
            for j, out in enumerate(outs):
                root = (self._cache_root(j, step, out, carry.get(j), incremental[j], entries[j])
                        if j in incremental else None)
                if root is None or shown[j] is not out:
                    root = fasthash.tensor_root(shown[j])
                roots.append(root)
            for j in self.small:
                self.small[j].append(outs[j])
            carry = {j: outs[j] for j in self.carried}
        self.cache_rows = {j: _compact(np.stack(entries[j])) for j in self.caches}
        self._state_leaves = Leaves(np.frombuffer(b"".join(roots), dtype=np.uint8).reshape(-1, 32).copy())

    @property
    def _full(self) -> list:
        """All levels over every tensor root (S_n), built once, natively."""
        if self._full_levels is None:
            self._full_levels = [_Level(level) for level in fasthash.merkle_levels(self._state_leaves.arr)]
        return self._full_levels

    # ------------------------------------------------------------ running

    def _run_step(self, step: int, carry: dict[int, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(outputs, outputs as the trace shows them): a replaced tensor is
        shown but never read by a later op (every other tensor stays honest)."""
        p = self.program
        outs = p.run_step(self.job, step, carry, self.t0, self.on_op)
        shown = [self.replace.get(step * p.num_ops + j + 1, out) for j, out in enumerate(outs)]
        return outs, shown

    def _cache_root(self, j: int, step: int, out: np.ndarray, prev: np.ndarray | None, inc, entries: list) -> bytes:
        cols = bool(self.program.ops[j].params[0])
        new = out[:, -1] if cols else out[-1]
        if prev is None:
            pure = out.shape == ((new.size, 1) if cols else (1, new.size))
        else:
            pure = out.shape[int(cols)] == step + 1 and np.array_equal(out[:, :-1] if cols else out[:-1], prev)
        entries.append(new.copy())
        if pure:
            inc.append(new)
        else:
            self.rebased[j][step] = out.copy()
            inc.reset(out)
        return inc.root()

    def _cache_at(self, j: int, step: int) -> np.ndarray:
        """Output of cache op j at `step`, from its appended entries."""
        cols = bool(self.program.ops[j].params[0])
        base_steps = [s for s in self.rebased[j] if s <= step]
        start = max(base_steps) if base_steps else -1
        parts = [self.rebased[j][start]] if start >= 0 else []
        new = self.cache_rows[j][start + 1:step + 1].astype(np.int64)
        if len(new):
            parts.append(new.T if cols else new)
        return np.concatenate(parts, axis=1 if cols else 0)

    def replay(self, step: int) -> list[np.ndarray]:
        """Every output of `step`, recomputed from the carried state."""
        if step not in self._steps_kept:
            carry = {}
            if step > 0:
                for j in self.carried:
                    carry[j] = (self._cache_at(j, step - 1) if j in self.cache_rows
                                else self.small[j][step - 1].astype(np.int64))
            self._steps_kept[step] = self._run_step(step, carry)[1]
            if len(self._steps_kept) > STEPS_KEPT:
                self._steps_kept.popitem(last=False)
        self._steps_kept.move_to_end(step)
        return self._steps_kept[step]

    def patched(self, position: int, tensor: np.ndarray) -> "DecoderTrace":
        """This trace with tensor `position` shown as `tensor` (no later op reads
        it): only that tensor's root changes, so the copy shares everything else
        instead of running the job again (a long job's trace takes minutes)."""
        bad = DecoderTrace.__new__(DecoderTrace)
        bad.__dict__.update(self.__dict__)
        bad.replace = {**self.replace, position: tensor}
        bad._state_leaves = self._state_leaves.copy()
        bad._state_leaves[position] = TensorTree.build(tensor).root
        bad._init_caches()
        return bad
