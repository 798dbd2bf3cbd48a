"""Every tensor root of a decoder job's trace, positions in blocks (DecoderTrace's fast build).

Running the template op by op for each of 4,096 positions and hashing each output in
Python took 77 CPU minutes for SmolLM2's longest job. The same values, computed
differently:

- the positions of a block run together: each row-wise op (RMSNorm, dense, RoPE,
  residual, SwiGLU) once over the block's rows (matrix products), the attention ops
  against the caches with the later positions masked, the softmax in native code;
  everything else (the embedding, the sampling tail) through the op's own rule,
  position by position;
- every root is hashed natively, eight hashes at a time over the CPUs
  (opinfer.trace.fasthash); the K and V^T caches are never copied per step: their
  roots at every step come from their rows (AppendTree's rule, natively for V^T).

A block needs the tokens its positions read: the prompt's, then the generated ones
(`tokens`, e.g. from the fast engine). They are a hint, never trusted: after each
block the program's own NEXT outputs must equal them; from the first that differs
the positions are recomputed one at a time with the program's tokens (as without a
hint). Only rules already in opinfer.semantics decide a value: the batched forms are
the same integer rules over more rows (tests/unit/test_blocked_trace.py compares every
root with the op-by-op trace).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.semantics import quant
from opinfer.semantics.ops import (APPEND, CONTEXT, DENSE_BLOCK, EXP_SUMS, INPUT, NEXT, PREV, PROBS, RESIDUAL,
                                   RMS_NORM, ROPE, RUN, SAME, SCORES, SWIGLU, WEIGHT, dim_value)
from opinfer.semantics.program import Program, job_steps
from opinfer.semantics.tensor import zero_row_root
from opinfer.trace import fasthash

MASK128 = (1 << 128) - 1
BLOCK = 64                      # positions per block: rows of the products; the scores of a block stay small
ROW_WISE = {RMS_NORM, DENSE_BLOCK, RESIDUAL}   # rules that already work on any number of rows


class Unsupported(Exception):
    """The template has a shape this builder does not handle: build step by step."""


@dataclass
class Built:
    leaves: np.ndarray                      # [N + 1, 32]: tensor roots, T_0 first
    small: dict[int, list[np.ndarray]]      # carried op j -> its output at every step
    cache_rows: dict[int, np.ndarray]       # cache op j -> the row (K) or column (V^T) appended at every step
    hint_steps: int                         # steps run in blocks (the rest: one at a time)


@lru_cache(maxsize=1)
def _blas_threads():
    """(get, set) of the BLAS numpy loaded (OpenBLAS), or None: its worker threads spin while
    they wait, and the block's products are small: one thread does them in a tenth of the CPU
    time when the hashing threads are busy too."""
    import ctypes

    try:
        paths = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", ""), ("openblas", "64_"), ("scipy_openblas", "")):
            get, put = (getattr(lib, f"{prefix}_{w}_num_threads{suffix}", None) for w in ("get", "set"))
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                return get, put
    return None


class one_blas_thread:
    """BLAS on one thread during a build. Nodes and challengers run with OPENBLAS_NUM_THREADS=1
    (the devnet sets it), where this changes nothing; elsewhere the count is set and restored
    (a process-wide setting: another thread's products run on one thread meanwhile)."""

    def __enter__(self):
        self.fns = _blas_threads()
        self.before = self.fns[0]() if self.fns is not None else 1
        if self.before > 1:
            self.fns[1](1)

    def __exit__(self, *exc):
        if self.before > 1:
            self.fns[1](self.before)


@lru_cache(maxsize=1)
def exp_table() -> np.ndarray:
    return np.ascontiguousarray(quant.exp_neg(np.arange(quant.EXP_INPUT_MAX + 1, dtype=np.int64)))


def _ref(slot) -> tuple[int, int]:
    return slot.ref >> 128, slot.ref & MASK128


class _Ragged:
    """A block's outputs of growing width: arr[i, :, :cols[i]] is position i's tensor."""

    def __init__(self, arr: np.ndarray, cols: np.ndarray):
        self.arr, self.cols = arr, cols

    def at(self, i: int) -> np.ndarray:
        return self.arr[i, :, :self.cols[i]]


class _Cache:
    def __init__(self, j: int):
        self.j = j


class Builder:
    def __init__(self, program: Program, job, tokens=None, block: int = BLOCK):
        self.p, self.job, self.block = program, job, block
        p = program
        self.P = p.num_ops
        self.steps = job_steps(p.steps_mode, job)
        self.t0 = job.tensor()
        self.L = len(job.tokens)
        self._pending_hint = tokens if hasattr(tokens, "result") else None   # a future: waited for after the prompt
        self.hint = [] if self._pending_hint is not None else self._clip(tokens)
        prev = {idx for op in p.ops for s in op.slots for kind, idx in [_ref(s)] if kind == PREV}
        self.caches = sorted(j for j in prev if p.ops[j].code == APPEND)
        self.carried = sorted(j for j in prev if j not in self.caches)
        # The ops from the first that reads a carried output other than NEXT (the sampler's
        # GEN) run position by position: their inputs come from the step before, in this block.
        self.tail = next((j for j, op in enumerate(p.ops) if j > 0 and any(
            kind == PREV and idx in self.carried and p.ops[idx].code != NEXT for kind, idx in map(_ref, op.slots))),
            self.P)
        last_use = {}
        for j, op in enumerate(p.ops):
            for kind, idx in map(_ref, op.slots):
                if kind == SAME:
                    last_use[idx] = j
        self.free_after: dict[int, list[int]] = {}       # a block's outputs are dropped after their last reader
        for idx, j in last_use.items():
            if idx not in self.carried:
                self.free_after.setdefault(j, []).append(idx)
        for j in self.caches:
            op = p.ops[j]
            if op.code != APPEND or _ref(op.slots[1])[0] != SAME:
                raise Unsupported("a cache fed by something other than an op of the same step")
        self.leaves = np.zeros((1 + self.steps * self.P, 32), dtype=np.uint8)
        self.leaves[0] = np.frombuffer(fasthash.tensor_root(self.t0), dtype=np.uint8)
        self.small = {j: [None] * self.steps for j in self.carried}
        self.cache_rows = {}
        for j in self.caches:
            op = p.ops[j]
            ctx = p.ctx(job, 0)
            width = dim_value(op.rows if op.params[0] else op.cols, ctx)
            self.cache_rows[j] = np.zeros((self.steps, width), dtype=np.int64)
        self.cache_f: dict[int, np.ndarray] = {}        # the caches as float64 [groups, steps, d], for BLAS
        self.cache_max: dict[int, int] = {}
        self.pending: list = []
        self.ctxs = [p.ctx(job, s * self.P) for s in range(self.steps)]

    # ------------------------------------------------------------ the job

    def _clip(self, tokens) -> list[int]:
        return [int(t) for t in (tokens or [])][: max(self.steps - self.L, 0)]

    def token(self, s: int) -> int | None:
        """The token step s embeds when known before the step runs (NEXT of step s - 1)."""
        if s < self.L:
            return int(self.t0[0, self.job.tokens_at + s])
        if self._pending_hint is not None:             # the engine ran while the prompt's blocks did
            try:
                self.hint = self._clip(self._pending_hint.result())
            except Exception:  # noqa: BLE001 - only a hint
                self.hint = []
            self._pending_hint = None
        g = s - self.L
        return self.hint[g] if g < len(self.hint) else None

    def build(self) -> Built:
        s, blocked = 0, 0
        while s < self.steps:
            known = s
            while known < self.steps and known - s < self.block and (known == s or self.token(known) is not None):
                known += 1
            b = known
            self.run_block(s, b)
            self.wait()
            # the hint is checked against the program's own NEXT: from the first step whose
            # successor embedded another token, the rest runs again with the program's tokens
            nxt = next((j for j in self.carried if self.p.ops[j].code == NEXT), None)
            bad = None
            if nxt is not None:
                for t in range(s, min(b, self.steps - 1)):
                    tok = self.token(t + 1)
                    if tok is not None and int(self.small[nxt][t][0, 0]) != tok:
                        bad = t
                        break
            if bad is not None:
                self.hint = self.hint[: max(bad + 1 - self.L, 0)]
                s = bad + 1
                continue
            if b - s > 1:
                blocked = b
            s = b
        self.cache_roots()
        return Built(self.leaves, self.small, self.cache_rows, blocked)

    # ------------------------------------------------------------ one block

    def slot_input(self, outs: dict, op_j: int, slot, a: int, b: int):
        kind, idx = _ref(slot)
        if kind == INPUT:
            return ("const", self.t0)
        if kind == WEIGHT:
            return ("const", self.p.weights[idx])
        if kind == SAME:
            return ("same", outs[idx])
        if kind == PREV:
            return ("prev", idx)
        raise CommitmentError(f"unknown slot kind {kind}")

    def at(self, value, i: int, s: int, outs: dict):
        """Position i's (step s's) tensor of an input as the op's rule takes it."""
        kind, v = value
        if kind == "const":
            return v
        if kind == "same":
            if isinstance(v, _Ragged):
                return v.at(i)
            if isinstance(v, _Cache):
                return self.cache_at(v.j, s)
            return v[i]
        idx = v                                        # previous step's output of op idx
        if s == 0:
            return None
        if idx in self.caches:
            return self.cache_at(idx, s - 1)
        got = self.small[idx][s - 1]
        if got is None:                                # NEXT not run yet in this block: the known token
            tok = self.token(s)
            return np.array([[tok]], dtype=np.int64)
        return got

    def cache_at(self, j: int, s: int) -> np.ndarray:
        rows = self.cache_rows[j][: s + 1]
        return rows.T.copy() if self.p.ops[j].params[0] else rows.copy()

    def run_block(self, a: int, b: int) -> None:
        p, B = self.p, b - a
        outs: dict = {}
        for t in range(a, b):                          # a re-run block starts clean
            for j in self.carried:
                self.small[j][t] = None
        for j in self.cache_f:                         # (and so do the float caches)
            self.cache_filled[j] = min(self.cache_filled[j], a)
        for j in range(self.tail):
            op = p.ops[j]
            ins = [self.slot_input(outs, j, s, a, b) for s in op.slots]
            outs[j] = self.batched(j, op, ins, a, b)
            self.hash(j, outs[j], a, b)
            if j in self.carried:
                for i in range(B):
                    self.small[j][a + i] = outs[j][i].copy()
            for idx in self.free_after.get(j, ()):
                outs[idx] = None
        tail_out: dict[int, list] = {j: [] for j in range(self.tail, self.P)}
        for i in range(B):
            s = a + i
            mine: dict = {}
            for j in range(self.tail, self.P):
                op = p.ops[j]
                ins = []
                for slot in op.slots:
                    kind, idx = _ref(slot)
                    if kind == SAME and idx >= self.tail:
                        ins.append(mine[idx])
                    else:
                        ins.append(self.at(self.slot_input(outs, j, slot, a, b), i, s, outs))
                out = op.run(ins, self.ctxs[s])
                mine[j] = out
                tail_out[j].append(out)
                if j in self.carried:
                    self.small[j][s] = out
        for j in range(self.tail, self.P):
            self.hash(j, _stack(tail_out[j]), a, b)

    def hash(self, j: int, out, a: int, b: int) -> None:
        """Hash a block's outputs of op j on the hashing threads while this one computes on."""
        if isinstance(out, _Cache):
            return                                      # cache roots: at the end, from every row
        at = 1 + np.arange(a, b) * self.P + j
        arr, cols = (out.arr, out.cols) if isinstance(out, _Ragged) else (out, None)

        def run():
            self.leaves[at] = fasthash.tensor_roots(arr, cols, split=False)
        self.pending.append(fasthash.pool().submit(run))

    def wait(self) -> None:
        for f in self.pending:
            f.result()
        self.pending = []

    # ------------------------------------------------------------ batched rules

    def batched(self, j: int, op, ins: list, a: int, b: int):
        B = b - a
        code = op.code
        ctx0 = self.ctxs[a]
        if code in ROW_WISE and dim_value(op.rows, ctx0) == 1 or code == DENSE_BLOCK:
            if all(k != "prev" and (k == "const" or (not isinstance(v, (_Ragged, _Cache)) and v.shape[1] == 1))
                   for k, v in ins):
                args = [v if k == "const" else v[:, 0, :] for k, v in ins]
                out = np.asarray(RUN[code](op, args, ctx0), dtype=np.int64)
                rows, cols = op.shape(ctx0)
                return out.reshape(B, rows, cols)
        if code == ROPE:
            return self.rope(op, ins, a, b)
        if code == SWIGLU:
            (_, x), (_, table) = ins
            (offset,) = op.params[:1]
            h = dim_value(op.cols, ctx0)
            idx = x[:, 0, :h] + offset
            flat = table.reshape(-1)
            if idx.min() < 0 or idx.max() >= flat.size:
                raise CommitmentError("swiglu: gate outside the table")
            return (flat[idx] * x[:, 0, h:2 * h])[:, None, :]
        if code == APPEND:
            return self.append(j, op, ins, a, b)
        if code == SCORES and isinstance(ins[1][1], _Cache):
            return self.scores(op, ins, a, b)
        if code == EXP_SUMS and isinstance(ins[0][1], _Ragged):
            return self.exp_sums(j, op, ins, a, b)
        if code == PROBS and isinstance(ins[0][1], _Ragged):
            return self.probs(op, ins, a, b)
        if code == CONTEXT and isinstance(ins[1][1], _Cache) and isinstance(ins[0][1], _Ragged):
            return self.context(op, ins, a, b)
        # anything else: the op's own rule, position by position
        return _stack([op.run([self.at(v, i, a + i, None) for v in ins], self.ctxs[a + i]) for i in range(B)])

    def rope(self, op, ins, a, b):
        (_, x), (_, table) = ins
        (head_dim,) = op.params[:1]
        cols = dim_value(op.cols, self.ctxs[a])
        if b - 1 >= table.shape[0]:
            raise CommitmentError(f"position {b - 1} beyond the RoPE table of {table.shape[0]}")
        half = head_dim // 2
        steps = np.arange(a, b)
        cos, sin = table[steps, :half][:, None, :], table[steps, half:head_dim][:, None, :]
        heads = x[:, 0, :cols].reshape(b - a, -1, head_dim)
        u, v = heads[..., 0::2], heads[..., 1::2]
        rnd = 1 << 13
        out = np.empty_like(heads)
        out[..., 0::2] = (u * cos - v * sin + rnd) >> 14
        out[..., 1::2] = (u * sin + v * cos + rnd) >> 14
        return out.reshape(b - a, 1, cols)

    def append(self, j, op, ins, a, b):
        transposed, offset = op.params[:2]
        (kind, prev), (_, src) = ins
        if kind != "prev" or prev != j or isinstance(src, (_Ragged, _Cache)) or src.shape[1] < 1:
            raise Unsupported("a cache that is not its own previous value plus a source row")
        width = self.cache_rows[j].shape[1]
        rows = src[:, 0, offset:offset + width]
        self.cache_rows[j][a:b] = rows
        self.cache_max[j] = max(self.cache_max.get(j, 0), _bound(rows))
        return _Cache(j)

    def _float_cache(self, j: int, d: int, a: int, b: int) -> np.ndarray:
        """Cache j's rows as float64 [groups, steps, d] (filled up to b): products of
        integers below 2^53 in float64 BLAS are exact."""
        f = self.cache_f.get(j)
        if f is None:
            width = self.cache_rows[j].shape[1]
            f = self.cache_f[j] = np.zeros((width // d, self.steps, d), dtype=np.float64)
            self.cache_filled = getattr(self, "cache_filled", {})
            self.cache_filled[j] = 0
        start = self.cache_filled[j]
        if b > start:
            f[:, start:b, :] = self.cache_rows[j][start:b].reshape(b - start, -1, d).transpose(1, 0, 2)
            self.cache_filled[j] = b
        return f

    def _product(self, lhs: np.ndarray, lhs_max: int, rhs: np.ndarray, rhs_max: int, inner: int) -> np.ndarray:
        """lhs @ rhs (rhs float64), exact: float64 while every sum is below 2^53, else exact_matmul."""
        if lhs_max * rhs_max * inner < 1 << 53:
            return (lhs.astype(np.float64) @ rhs).astype(np.int64)
        return quant.exact_matmul(lhs, rhs.astype(np.int64), lhs_max, rhs_max)

    def _kv(self, j: int, b: int, head_dim: int) -> np.ndarray:
        """The cache's rows 0..b-1 as [b, groups, head_dim] (K rows; V^T columns)."""
        return self.cache_rows[j][:b].reshape(b, -1, head_dim)

    def scores(self, op, ins, a, b):
        (_, q), (_, cache) = ins
        d, g = op.params[:2]
        h = dim_value(op.rows, self.ctxs[a])           # one query row per step
        B = b - a
        qh = q[:, 0, :h * d].reshape(B, h, d)
        k = self._float_cache(cache.j, d, a, b)         # [groups, steps, d]
        qmax = _bound(qh)
        out = np.zeros((B, h, b), dtype=np.int64)
        for grp in range(k.shape[0]):
            heads = [hd for hd in range(h) if hd // g == grp]
            if heads:
                lhs = qh[:, heads, :].reshape(-1, d)
                out[:, heads, :] = self._product(lhs, qmax, k[grp, :b, :].T, self.cache_max[cache.j], d).reshape(
                    B, len(heads), b)
        cols = np.arange(a, b) + 1
        out *= (np.arange(b)[None, None, :] < cols[:, None, None])
        return _Ragged(out, cols)

    def _softmax(self, x: _Ragged, mult: int, shift: int, one: int, chunks: int):
        """(sums [B*h, chunks], probs [B*h, width]) of a block's scores, natively; kept for the
        op after (EXP_SUMS and PROBS read the same scores)."""
        key = (mult, shift, one, chunks)
        if getattr(self, "_soft_x", None) is x and self._soft_key == key:
            return self._soft
        from opinfer import native

        B, h, width = x.arr.shape
        table = exp_table()
        sums = np.zeros((B * h, chunks), dtype=np.int64)
        probs = np.zeros((B * h, width), dtype=np.int64)
        arr = np.ascontiguousarray(x.arr)
        cols = np.repeat(x.cols, h)                     # held: the call reads it
        rc = native.lib().oi_softmax_chunks(arr.ctypes.data, B * h, width, cols.ctypes.data, mult,
                                            shift, one, table.ctypes.data, len(table) - 1, 256, chunks,
                                            sums.ctypes.data, probs.ctypes.data)
        if rc != 0:
            raise Unsupported("softmax rows the native rule refuses")
        self._soft_x, self._soft_key, self._soft = x, key, (sums, probs)   # (x held: its id is not reused)
        return self._soft

    def _probs_one(self, j: int) -> int:
        """`one` of the PROBS op that reads the same scores as EXP_SUMS op j (1 if none)."""
        src = self.p.ops[j].slots[0].ref
        return next((op.params[2] for op in self.p.ops[j + 1:] if op.code == PROBS and op.slots[0].ref == src), 1)

    def exp_sums(self, j, op, ins, a, b):
        x = ins[0][1]
        mult, shift = op.params[:2]
        chunks = dim_value(op.cols, self.ctxs[a])
        if x.arr.shape[2] > chunks * 256:
            raise CommitmentError(f"exp_sums: a row of {x.arr.shape[2]} beyond {chunks} chunks of 256")
        sums, _ = self._softmax(x, mult, shift, self._probs_one(j), chunks)
        B, h, _ = x.arr.shape
        return sums.reshape(B, h, chunks)

    def probs(self, op, ins, a, b):
        x = ins[0][1]
        mult, shift, one = op.params[:3]
        width = x.arr.shape[2]
        chunks = self._soft_key[3] if getattr(self, "_soft_x", None) is x else -(-width // 256)
        _, probs = self._softmax(x, mult, shift, one, chunks)
        B, h, _ = x.arr.shape
        return _Ragged(probs.reshape(B, h, width), x.cols)

    def context(self, op, ins, a, b):
        (_, pr), (_, cache) = ins
        d, g, mult, shift, lo, hi = op.params[:6]
        B, h, width = pr.arr.shape
        v = self._float_cache(cache.j, d, a, b)         # [groups, steps, d]
        pmax = _bound(pr.arr)
        out = np.zeros((B, h, d), dtype=np.int64)
        for grp in range(v.shape[0]):
            heads = [hd for hd in range(h) if hd // g == grp]
            if heads:
                lhs = pr.arr[:, heads, :].reshape(-1, width)
                out[:, heads, :] = self._product(lhs, pmax, v[grp, :width, :], self.cache_max[cache.j], width).reshape(
                    B, len(heads), d)
        return quant.requant(out.reshape(B, 1, h * d), mult, shift, lo, hi)

    # ------------------------------------------------------------ cache roots

    def cache_roots(self) -> None:
        """Every step's cache roots: V^T natively on the pool's threads while this thread does
        the K caches (row roots, then each step's root over the rows so far)."""
        steps = np.arange(1, self.steps + 1)
        ats = {j: 1 + np.arange(self.steps) * self.P + j for j in self.caches}
        vt = [j for j in self.caches if self.p.ops[j].params[0]]
        pool = fasthash.pool()
        futures = {j: pool.submit(fasthash.vt_roots, self.cache_rows[j].T, steps) for j in vt}
        for j in self.caches:
            if j in futures:
                continue
            rows = self.cache_rows[j]
            pad = zero_row_root(rows.shape[1])
            levels = fasthash.merkle_levels(fasthash.tensor_roots(rows[:, None, :]), pad)
            self.leaves[ats[j]] = fasthash.prefix_roots(levels, steps, pad)
        for j, f in futures.items():
            self.leaves[ats[j]] = f.result()


def _bound(x: np.ndarray) -> int:
    return int(np.abs(x).max()) + 1 if x.size else 1


def _stack(outs: list[np.ndarray]):
    shapes = {o.shape for o in outs}
    if len(shapes) == 1:
        return np.stack(outs)
    rows = {o.shape[0] for o in outs}
    if len(rows) != 1:
        raise Unsupported("outputs of one op with different row counts in one block")
    width = max(o.shape[1] for o in outs)
    arr = np.zeros((len(outs), rows.pop(), width), dtype=np.int64)
    for i, o in enumerate(outs):
        arr[i, :, :o.shape[1]] = o
    return _Ragged(arr, np.array([o.shape[1] for o in outs], dtype=np.int64))


def build(program: Program, job, tokens=None, block: int = BLOCK) -> Built:
    with one_blas_thread():
        return Builder(program, job, tokens, block).build()
