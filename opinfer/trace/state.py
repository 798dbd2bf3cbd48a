"""A job's trace as the dispute game sees it: every tensor of a program run,
its tensor roots, the state roots S_i over them, state proofs and the
one-step witnesses (docs/ops.md). The program and its rules are
opinfer/semantics; this module only commits to what they computed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from eth_abi import encode

from opinfer.semantics import merkle
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.ops import NOT_READ, WEIGHT
from opinfer.semantics.program import PER_POSITION, Program, value_bytes
from opinfer.semantics.tensor import TensorTree, row_bytes


@dataclass
class Trace:
    """A job's full trace with the state commitments the game asks for."""

    program: Program
    job: JobInput
    tensors: list[np.ndarray]
    trees: list[TensorTree] = field(init=False)

    def __post_init__(self) -> None:
        self.trees = [TensorTree.build(t) for t in self.tensors]
        self._state_leaves = [t.root for t in self.trees]

    @classmethod
    def of(cls, program: Program, job: JobInput, on_op=None, tokens=None) -> "Trace":
        """The job's trace: every tensor kept for an encoder; a decoder's
        (PER_POSITION) in bounded memory, replayed step by step on demand
        (decoder_trace.DecoderTrace; `tokens`, the generated ids if known, only
        speed it up)."""
        if program.steps_mode == PER_POSITION:
            from opinfer.trace.decoder_trace import DecoderTrace
            return DecoderTrace(program, job, on_op, tokens=tokens)
        return cls(program, job, program.run(job, on_op))

    def patched(self, position: int, tensor: np.ndarray) -> "Trace":
        """This trace with tensor `position` replaced (every other tensor as it is)."""
        bad = Trace.__new__(Trace)
        bad.program, bad.job = self.program, self.job
        bad.tensors = list(self.tensors)
        bad.tensors[position] = tensor
        bad.trees = list(self.trees)
        bad.trees[position] = TensorTree.build(tensor)
        bad._state_leaves = [t.root for t in bad.trees]
        return bad

    @property
    def n(self) -> int:
        return len(self._state_leaves) - 1

    @property
    def input_root(self) -> bytes:
        return self._state_leaves[0]

    @property
    def output_root(self) -> bytes:
        return self._state_leaves[-1]

    @property
    def output(self) -> np.ndarray:
        return self.tensors[-1]

    def state_tree(self, i: int) -> list[list[bytes]]:
        """S_i: tensor roots 0..i, zero beyond (all levels; O(n): prefer state_root/state_proof)."""
        return merkle.levels(self._state_leaves[: i + 1] + [merkle.ZERO32] * (self.n - i))

    @property
    def _full(self) -> list[list[bytes]]:
        """All levels over every tensor root (S_n), built once."""
        if getattr(self, "_full_levels", None) is None:
            self._full_levels = merkle.levels(self._state_leaves)
        return self._full_levels

    def _prefix_nodes(self, i: int) -> list[bytes]:
        """The nodes of S_i on leaf i's path, lowest first, root last. Nodes left
        of the path are S_n's (their leaves are all <= i), nodes right of it are
        zero subtrees, so S_i costs O(log n) hashes instead of O(n)."""
        full = self._full
        cur, idx, path = self._state_leaves[i], i, []
        for k in range(len(full) - 1):
            path.append(cur)
            cur = (merkle.keccak(cur + merkle.zero_subtree(k)) if idx % 2 == 0
                   else merkle.keccak(full[k][idx - 1] + cur))
            idx >>= 1
        path.append(cur)
        return path

    def state_root(self, i: int) -> bytes:
        return self._prefix_nodes(i)[-1]

    def state_proof(self, i: int, position: int) -> list[bytes]:
        """Siblings of leaf `position` in S_i."""
        full, path = self._full, self._prefix_nodes(i)
        out = []
        for k in range(len(full) - 1):
            q, p = (position >> k) ^ 1, i >> k
            out.append(full[k][q] if q < p else path[k] if q == p else merkle.zero_subtree(k))
        return out

    def witness(self, op_index: int, row: int, col: int) -> bytes:
        """Witness for element (row, col) of op `op_index`, against S_op_index.

        For each slot, in order: tensor root, row index, the lengths of the
        tensor proof and of the row proof, the two proofs (32-byte words),
        the row's encoding width e (a word) and the row: its committed chunks
        for a packed slot (e = width), its values as e-byte numbers for an
        unpacked one (see value_bytes); a slot the element does not read is
        the two words (0, NOT_READ). Then one zero word."""
        p = self.program
        op = p.ops[op_index % p.num_ops]
        ctx = p.ctx(self.job, op_index)
        rows, cols = op.shape(ctx)
        if row >= rows or col >= cols:
            return b""  # padding: the verifier knows the answer (0) without inputs
        ins = p.slot_tensors(op, op_index, self.tensors)
        out = b""
        for s, r in zip(op.slots, op.reads(row, col, ins, ctx)):
            if r is None:
                out += encode(["uint256", "uint256"], [0, NOT_READ])
                continue
            if s.ref >> 128 == WEIGHT:
                w = s.ref & ((1 << 128) - 1)
                tree, proof = p.weight_trees[w], merkle.proof(p.weights_tree, w)
            else:
                t = p.tensor_index(s.ref, op_index)
                tree, proof = self.trees[t], self.state_proof(op_index, t)
            row_proof = tree.row_proof(r)
            if s.width < 32:
                e, data = s.width, row_bytes(tree.values[r], s.width)
            else:
                e, data = value_bytes(tree.values[r])
            out += encode(["bytes32", "uint256", "uint256", "uint256"], [tree.root, r, len(proof), len(row_proof)])
            out += b"".join(proof) + b"".join(row_proof) + encode(["uint256"], [e]) + data
        return out + bytes(32)
