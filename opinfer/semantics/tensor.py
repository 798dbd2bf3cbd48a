"""Tensor, state and model commitments (twin of contracts/StepVerifier.vy).

A tensor [R, C] of signed integers: rows are cut into chunks of CHUNK
words (zero padded); chunk hash = keccak256(abi_encode(int256[CHUNK]));
activations use one value per word; weights are packed: a tensor of width
b bytes (1, 2, 4 or 8) holds 32 / b values per word, big-endian two's
complement, first value in the most significant bytes (so one chunk holds
512 / b values and a 135M-parameter model hashes 135 MB, not 4 GB);
row root = Merkle root of chunk hashes padded with zero-chunk hashes; tensor
root = Merkle root of row roots padded with zero-row roots. Phase 2 of a
dispute descends this tree as one binary tree whose leaves are chunk hashes
(leaf index = row * 2^col_bits + chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.semantics import merkle

CHUNK = 16
CHUNK_BYTES = 32 * CHUNK
WIDTHS = (1, 2, 4, 8, 32)


def per_chunk(width: int = 32) -> int:
    """Values per chunk for a tensor of `width` bytes per value."""
    return CHUNK_BYTES // width


def _packed(values: np.ndarray, width: int) -> bytes:
    """Values as `width`-byte big-endian two's complement (width < 32)."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    lo, hi = -(1 << (8 * width - 1)), (1 << (8 * width - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise CommitmentError(f"value out of range for a {width}-byte tensor")
    return v.astype(f">i{width}").tobytes()


def _words(values: np.ndarray) -> bytes:
    """Signed integers as big-endian two's-complement 32-byte words."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    out = np.zeros((v.size, 32), dtype=np.uint8)
    out[:, :24] = np.where(v < 0, 0xFF, 0x00)[:, None]
    out[:, 24:] = v.astype(">i8").view(np.uint8).reshape(-1, 8)
    return out.tobytes()


def row_bytes(row: np.ndarray, width: int = 32) -> bytes:
    """One row's chunks as committed: values zero padded to whole chunks,
    one per word (width 32) or packed `width` bytes each."""
    row = np.asarray(row, dtype=np.int64).reshape(-1)
    n = per_chunk(width)
    padded = np.zeros(-(-row.size // n) * n, dtype=np.int64)
    padded[: row.size] = row
    return _words(padded) if width == 32 else _packed(padded, width)


def chunk_hashes(row: np.ndarray, width: int = 32) -> list[bytes]:
    """Chunk hashes of one row (the last chunk zero padded)."""
    data = row_bytes(row, width)
    return [merkle.keccak(data[i : i + CHUNK_BYTES]) for i in range(0, len(data), CHUNK_BYTES)]


@lru_cache(maxsize=None)
def zero_chunk() -> bytes:
    return merkle.keccak(b"\x00" * (32 * CHUNK))


@lru_cache(maxsize=None)
def zero_row_root(cols: int, width: int = 32) -> bytes:
    return merkle.root([zero_chunk()] * -(-cols // per_chunk(width)), pad=zero_chunk())


def row_tree(row: np.ndarray, width: int = 32) -> list[list[bytes]]:
    return merkle.levels(chunk_hashes(row, width), pad=zero_chunk())


def row_root(row: np.ndarray, width: int = 32) -> bytes:
    return row_tree(row, width)[-1][0]


@dataclass
class TensorTree:
    """A tensor with its full commitment tree (rows, then chunks)."""

    values: np.ndarray
    row_trees: list[list[list[bytes]]]
    rows_tree: list[list[bytes]]
    width: int = 32

    @classmethod
    def build(cls, values: np.ndarray, width: int = 32) -> "TensorTree":
        values = np.asarray(values, dtype=np.int64)
        if values.ndim == 1:
            values = values.reshape(1, -1)
        if values.ndim != 2 or values.size == 0:
            raise CommitmentError(f"a tensor must be a non-empty 2-D array, got shape {values.shape}")
        if width not in WIDTHS:
            raise CommitmentError(f"tensor width must be one of {WIDTHS} bytes, got {width}")
        row_trees = [row_tree(r, width) for r in values]
        rows_tree = merkle.levels([t[-1][0] for t in row_trees], pad=zero_row_root(values.shape[1], width))
        return cls(values, row_trees, rows_tree, width)

    @property
    def root(self) -> bytes:
        return self.rows_tree[-1][0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def col_bits(self) -> int:
        return merkle.ceil_log2(-(-self.shape[1] // CHUNK))

    @property
    def row_bits(self) -> int:
        return merkle.ceil_log2(self.shape[0])

    @property
    def depth(self) -> int:
        return self.row_bits + self.col_bits

    def row_proof(self, row: int) -> list[bytes]:
        return merkle.proof(self.rows_tree, row)

    def node(self, level: int, index: int) -> bytes:
        """Hash of the subtree at `level` below the root (0 = root), position `index`."""
        if level <= self.row_bits:
            return self.rows_tree[self.row_bits - level][index]
        # Below the row level: inside row `index >> k` at depth level - row_bits.
        inner = level - self.row_bits
        row = index >> inner
        if row >= self.shape[0]:
            return self._padding_node(inner)
        tree = self.row_trees[row]
        return tree[self.col_bits - inner][index & ((1 << inner) - 1)]

    def _padding_node(self, inner: int) -> bytes:
        node = zero_chunk()
        for _ in range(self.col_bits - inner):
            node = merkle.keccak(node + node)
        return node

    def chunk(self, leaf_index: int) -> list[int]:
        """The CHUNK values of phase-2 leaf `leaf_index` (zero padded)."""
        row, chunk = leaf_index >> self.col_bits, leaf_index & ((1 << self.col_bits) - 1)
        out = [0] * CHUNK
        if row < self.shape[0]:
            for j in range(CHUNK):
                col = chunk * CHUNK + j
                if col < self.shape[1]:
                    out[j] = int(self.values[row, col])
        return out


def tensor_root(values: np.ndarray) -> bytes:
    return TensorTree.build(values).root


def chunk_hash(values: list[int]) -> bytes:
    return merkle.keccak(_words(np.asarray(values, dtype=np.int64)))
