"""Integer programs as the StepVerifier sees them: op descriptors, weights,
model roots, execution traces, state roots and one-step witnesses.

Only the op the contracts support so far is here: OP_DOT, a requantised
integer dot product (see contracts/StepVerifier.vy for its exact rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from eth_abi import encode

from opinfer.engine.quant import exact_matmul, requant
from opinfer.errors import CommitmentError
from opinfer.trace import merkle
from opinfer.trace.tensor import TensorTree

OP_DOT = 1


@dataclass(frozen=True)
class DotOp:
    """out[r, c] = requant(sum_i T[src][r, i] * W[weight][c, i]) (opinfer.engine.quant)."""

    src: int
    weight: int
    rows: int
    cols: int
    k: int
    multiplier: int
    shift: int
    qmin: int = -128
    qmax: int = 127

    def encode(self) -> bytes:
        return encode(
            ["uint256"] * 6 + ["int256", "uint256", "int256", "int256"],
            [OP_DOT, self.src, self.weight, self.rows, self.cols, self.k,
             self.multiplier, self.shift, self.qmin, self.qmax],
        )

    def run(self, tensors: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
        a, w = tensors[self.src], weights[self.weight]
        if a.shape != (self.rows, self.k) or w.shape != (self.cols, self.k):
            raise CommitmentError(f"dot op shapes {a.shape} x {w.shape} do not match {self}")
        acc = exact_matmul(a, w.T, int(np.abs(a).max()) + 1, int(np.abs(w).max()) + 1)
        return requant(acc, self.multiplier, self.shift, self.qmin, self.qmax)


@dataclass
class Program:
    """A model: ops over tensors plus the weights they read."""

    ops: list[DotOp]
    weights: list[np.ndarray]

    @cached_property
    def weight_trees(self) -> list[TensorTree]:
        return [TensorTree.build(w) for w in self.weights]

    @cached_property
    def program_tree(self) -> list[list[bytes]]:
        return merkle.levels([merkle.keccak(op.encode()) for op in self.ops])

    @cached_property
    def weights_tree(self) -> list[list[bytes]]:
        return merkle.levels([t.root for t in self.weight_trees])

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @cached_property
    def model_root(self) -> bytes:
        return merkle.keccak(encode(
            ["bytes32", "bytes32", "uint256", "uint256"],
            [self.program_tree[-1][0], self.weights_tree[-1][0], self.num_ops, len(self.weights)],
        ))

    def header(self, op_index: int) -> bytes:
        """What the verifier needs to prove op `op_index` against the model root."""
        return encode(
            ["bytes32", "bytes32", "uint256", "bytes", "bytes32[]"],
            [self.program_tree[-1][0], self.weights_tree[-1][0], len(self.weights),
             self.ops[op_index].encode(), merkle.proof(self.program_tree, op_index)],
        )

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """All tensors of the trace: [input, out_0, ..., out_{N-1}]."""
        tensors = [np.asarray(x, dtype=np.int64)]
        for op in self.ops:
            tensors.append(op.run(tensors, self.weights))
        return tensors


@dataclass
class Trace:
    """A job's full trace with the state commitments the game asks for."""

    program: Program
    tensors: list[np.ndarray]
    trees: list[TensorTree] = field(init=False)

    def __post_init__(self) -> None:
        self.trees = [TensorTree.build(t) for t in self.tensors]

    @property
    def n(self) -> int:
        return len(self.tensors) - 1

    @property
    def input_root(self) -> bytes:
        return self.trees[0].root

    @property
    def output_root(self) -> bytes:
        return self.trees[-1].root

    def state_tree(self, i: int) -> list[list[bytes]]:
        """S_i: tensor roots 0..i, zero beyond."""
        roots = [t.root for t in self.trees[: i + 1]]
        return merkle.levels(roots + [merkle.ZERO32] * (self.n - i))

    def state_root(self, i: int) -> bytes:
        return self.state_tree(i)[-1][0]

    def state_proof(self, i: int, position: int) -> list[bytes]:
        return merkle.proof(self.state_tree(i), position)

    def dot_witness(self, op_index: int, row: int, col: int) -> bytes:
        """Witness for element (row, col) of op `op_index`, against S_op_index."""
        op = self.program.ops[op_index]
        if row >= op.rows or col >= op.cols:
            return b""  # padding: the verifier knows the answer (0) without inputs
        src_tree = self.trees[op.src]
        w_tree = self.program.weight_trees[op.weight]
        return encode(
            ["bytes32", "bytes32[]", "int256[]", "bytes32[]", "bytes32", "bytes32[]", "int256[]", "bytes32[]"],
            [
                src_tree.root, self.state_proof(op_index, op.src),
                [int(v) for v in src_tree.values[row]], src_tree.row_proof(row),
                w_tree.root, merkle.proof(self.program.weights_tree, op.weight),
                [int(v) for v in w_tree.values[col]], w_tree.row_proof(col),
            ],
        )


def random_program(rng: np.random.Generator, dims: list[int], rows: int = 2) -> Program:
    """A chain of dot ops (dims[0] -> dims[1] -> ...), int8 weights: test models."""
    ops, weights = [], []
    for i, (k, c) in enumerate(zip(dims[:-1], dims[1:])):
        weights.append(rng.integers(-128, 128, size=(c, k)))
        ops.append(DotOp(src=i, weight=i, rows=rows, cols=c, k=k,
                         multiplier=int(rng.integers(1 << 14, 1 << 15)), shift=int(rng.integers(20, 24))))
    return Program(ops, weights)
