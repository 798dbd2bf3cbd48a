"""Binary Merkle trees as the contracts build them.

Internal node = keccak256(left ++ right); a tree over n leaves is padded with
a given padding leaf to 2^ceil(log2 n) leaves; proofs list siblings from the
leaf upwards.
"""

from __future__ import annotations

from functools import lru_cache

from sha3 import keccak_256

from opinfer.errors import CommitmentError

ZERO32 = b"\x00" * 32


def keccak(data: bytes) -> bytes:
    return keccak_256(data).digest()


def ceil_log2(n: int) -> int:
    """Smallest d with 2^d >= n (0 for n <= 1), as the contracts compute it."""
    return (n - 1).bit_length() if n > 1 else 0


def levels(leaves: list[bytes], pad: bytes = ZERO32) -> list[list[bytes]]:
    """All levels of the tree, leaves first, root last."""
    if not leaves:
        raise CommitmentError("a Merkle tree needs at least one leaf")
    width = 1 << ceil_log2(len(leaves))
    layer = list(leaves) + [pad] * (width - len(leaves))
    out = [layer]
    while len(layer) > 1:
        layer = [keccak(layer[i] + layer[i + 1]) for i in range(0, len(layer), 2)]
        out.append(layer)
    return out


def root(leaves: list[bytes], pad: bytes = ZERO32) -> bytes:
    return levels(leaves, pad)[-1][0]


def proof(tree: list[list[bytes]], index: int) -> list[bytes]:
    """Siblings of leaf `index`, lowest first."""
    if not 0 <= index < len(tree[0]):
        raise CommitmentError(f"leaf index {index} outside a tree of {len(tree[0])} leaves")
    siblings = []
    for layer in tree[:-1]:
        siblings.append(layer[index ^ 1])
        index //= 2
    return siblings


def fold(index: int, leaf: bytes, siblings: list[bytes]) -> bytes:
    """Root implied by a leaf, its index and its siblings."""
    node = leaf
    for sibling in siblings:
        node = keccak(node + sibling) if index % 2 == 0 else keccak(sibling + node)
        index //= 2
    if index != 0:
        raise CommitmentError("leaf index beyond the tree that the proof describes")
    return node


@lru_cache(maxsize=None)
def zero_subtree(level: int) -> bytes:
    """Root of a subtree of 2^level zero leaves."""
    node = ZERO32
    for _ in range(level):
        node = keccak(node + node)
    return node
