"""Result leaves and batches (twin of contracts/ResultRollup.vy).

Leaf record: job_id | model_id | input_root | output_root | node (left-padded
word) | r | s | v | input. The node signs an EIP-712 ResultLeaf struct that
binds chain id and rollup address, so a signature cannot be replayed on
another chain or deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from eth_abi import encode
from eth_account import Account
from eth_utils import to_checksum_address

from opinfer.errors import CommitmentError
from opinfer.trace import merkle

HEADER_BYTES = 225
MAX_INPUT_BYTES = 4096
MAX_LEAVES = 256

DOMAIN_TYPEHASH = merkle.keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
LEAF_TYPEHASH = merkle.keccak(
    b"ResultLeaf(bytes32 jobId,uint256 modelId,bytes32 inputRoot,bytes32 outputRoot,bytes32 inputHash,address node)"
)


def domain_separator(chain_id: int, rollup: str) -> bytes:
    return merkle.keccak(encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [DOMAIN_TYPEHASH, merkle.keccak(b"opinfer"), merkle.keccak(b"1"), chain_id, rollup],
    ))


@dataclass(frozen=True)
class ResultLeaf:
    job_id: bytes
    model_id: int
    input_root: bytes
    output_root: bytes
    node: str
    input: bytes = b""
    signature: bytes = b"\x00" * 65

    def digest(self, chain_id: int, rollup: str) -> bytes:
        struct_hash = merkle.keccak(encode(
            ["bytes32", "bytes32", "uint256", "bytes32", "bytes32", "bytes32", "address"],
            [LEAF_TYPEHASH, self.job_id, self.model_id, self.input_root, self.output_root,
             merkle.keccak(self.input), self.node],
        ))
        return merkle.keccak(b"\x19\x01" + domain_separator(chain_id, rollup) + struct_hash)

    def signed(self, private_key, chain_id: int, rollup: str) -> "ResultLeaf":
        sig = Account.unsafe_sign_hash(self.digest(chain_id, rollup), private_key)
        return replace(self, signature=sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v]))

    def encode(self) -> bytes:
        if len(self.input) > MAX_INPUT_BYTES:
            raise CommitmentError(f"job input is {len(self.input)} bytes; the limit is {MAX_INPUT_BYTES}")
        if len(self.signature) != 65:
            raise CommitmentError("a signature is 65 bytes (r, s, v)")
        return (
            self.job_id + encode(["uint256"], [self.model_id]) + self.input_root + self.output_root
            + encode(["address"], [self.node]) + self.signature + self.input
        )

    @classmethod
    def decode(cls, record: bytes) -> "ResultLeaf":
        if len(record) < HEADER_BYTES:
            raise CommitmentError(f"a leaf record has at least {HEADER_BYTES} bytes, got {len(record)}")
        return cls(
            job_id=record[0:32],
            model_id=int.from_bytes(record[32:64], "big"),
            input_root=record[64:96],
            output_root=record[96:128],
            node=to_checksum_address(record[140:160]),
            signature=record[160:225],
            input=record[225:],
        )

    @property
    def hash(self) -> bytes:
        return merkle.keccak(self.encode())


class Batch:
    """A batch's Merkle tree over leaf hashes, as the rollup computes it."""

    def __init__(self, leaves: list[ResultLeaf]):
        if not 0 < len(leaves) <= MAX_LEAVES:
            raise CommitmentError(f"a batch holds 1 to {MAX_LEAVES} leaves, got {len(leaves)}")
        self.leaves = leaves
        self.records = [leaf.encode() for leaf in leaves]
        self.tree = merkle.levels([merkle.keccak(r) for r in self.records])

    @property
    def root(self) -> bytes:
        return self.tree[-1][0]

    @property
    def data_hash(self) -> bytes:
        h = merkle.ZERO32
        for level0 in self.tree[0][: len(self.leaves)]:
            h = merkle.keccak(h + level0)
        return h

    def proof(self, index: int) -> list[bytes]:
        return merkle.proof(self.tree, index)
