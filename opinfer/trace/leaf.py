"""Result leaves and batches (twin of contracts/ResultRollup.vy).

On-chain a leaf is the static struct (job_id, model_id, input_root,
output_root, input_hash, input_len, node, r, vs) and its hash is
keccak256(abi_encode(leaf)); the batch's job inputs follow as one blob in
leaf order. The node signs an EIP-712 ResultLeaf struct that binds chain id
and rollup address, so a signature cannot be replayed on another chain or
deployment; the signature is stored compact (EIP-2098).

One signature rule everywhere: `recover_compact` is the exact twin of
ResultRollup._recover (the EVM ecrecover precompile: r and s in [1, n),
high s accepted), so what the coordinator posts, what the SDK reports valid
and what DisputeGame.challenge accepts are the same set. Signatures that
come from nodes go through `canonical_signature` first: every form that
proves the node signed (high-s twin, v in {0, 1, 27, 28, 35+}, 64-byte
EIP-2098) becomes r || low s || v in {27, 28}; anything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from eth_abi import encode
from eth_account import Account
from eth_utils import to_checksum_address

from opinfer.errors import CommitmentError
from opinfer.semantics import merkle

MAX_INPUT_BYTES = 4096
MAX_INPUTS_BYTES = 16384
MAX_LEAVES = 128
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
UPPER_BIT = 1 << 255
LEAF_TYPES = ["bytes16", "uint256", "bytes32", "bytes32", "bytes32", "uint256", "address", "bytes32", "bytes32"]
LEAF_ABI = "(" + ",".join(LEAF_TYPES) + ")"

DOMAIN_TYPEHASH = merkle.keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
LEAF_TYPEHASH = merkle.keccak(
    b"ResultLeaf(bytes16 jobId,uint256 modelId,bytes32 inputRoot,bytes32 outputRoot,bytes32 inputHash,address node)"
)


def domain_separator(chain_id: int, rollup: str) -> bytes:
    return merkle.keccak(encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [DOMAIN_TYPEHASH, merkle.keccak(b"opinfer"), merkle.keccak(b"1"), chain_id, rollup],
    ))


def recovery_bit(v: int) -> int | None:
    """The y-parity a signature's v stands for: 27/28 (Ethereum), 0/1 (raw),
    35+ (EIP-155: v = 2 * chain_id + 35 + parity); None for any other v."""
    if v in (0, 1):
        return v
    if v in (27, 28):
        return v - 27
    if v >= 35:
        return (v - 35) % 2
    return None


def ecrecover(digest: bytes, bit: int, r: int, s: int) -> str | None:
    """What the EVM's ecrecover precompile returns for v = 27 + bit (None
    where it returns the zero address): r and s in [1, n), any s (high s
    too), the point must exist."""
    from eth_keys import keys

    if bit not in (0, 1) or not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        return None
    try:
        return keys.Signature(vrs=(bit, r, s)).recover_public_key_from_msg_hash(digest).to_checksum_address()
    except Exception:  # noqa: BLE001 - no point with that x coordinate, or any malformed value
        return None


def recover_compact(digest: bytes, r: bytes, vs: bytes) -> str | None:
    """Signer of a compact (EIP-2098) signature exactly as ResultRollup._recover
    computes it (the rule DisputeGame.challenge and void_forged_leaf apply);
    None where the contract gets the zero address."""
    vs_int = int.from_bytes(bytes(vs), "big")
    return ecrecover(digest, vs_int >> 255, int.from_bytes(bytes(r), "big"), vs_int & (UPPER_BIT - 1))


def canonical_signature(signature: bytes, digest: bytes, signer: str) -> bytes | None:
    """The canonical form (r || low s || v in {27, 28}, 65 bytes) of any
    signature that proves `signer` signed `digest`: 65-byte (r, s, v) with
    v in {0, 1, 27, 28, 35+}, or 64-byte EIP-2098 (r, yParity << 255 | s);
    a high s is replaced by its twin n - s with the parity flipped. None
    when the signature is malformed or recovers to anyone else. What a
    coordinator stores and posts, so the chain, the challenger and the SDK
    all see the one form."""
    signature = bytes(signature)
    if len(signature) == 65:
        r, s, bit = (int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"),
                     recovery_bit(signature[64]))
    elif len(signature) == 64:
        vs = int.from_bytes(signature[32:], "big")
        r, s, bit = int.from_bytes(signature[:32], "big"), vs & (UPPER_BIT - 1), vs >> 255
    else:
        return None
    if bit is None or not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        return None
    if s > SECP256K1_HALF_N:
        s, bit = SECP256K1_N - s, bit ^ 1
    recovered = ecrecover(digest, bit, r, s)
    if recovered is None or recovered.lower() != str(signer).lower():
        return None
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + bit])


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
            ["bytes32", "bytes16", "uint256", "bytes32", "bytes32", "bytes32", "address"],
            [LEAF_TYPEHASH, self.job_id, self.model_id, self.input_root, self.output_root,
             merkle.keccak(self.input), self.node],
        ))
        return merkle.keccak(b"\x19\x01" + domain_separator(chain_id, rollup) + struct_hash)

    def signed(self, private_key, chain_id: int, rollup: str) -> "ResultLeaf":
        sig = Account.unsafe_sign_hash(self.digest(chain_id, rollup), private_key)
        return replace(self, signature=sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v]))

    def as_tuple(self) -> tuple:
        """The `Leaf` struct as the contracts take it."""
        if len(self.job_id) != 16:
            raise CommitmentError("a job id is 16 bytes (128 bits)")
        if len(self.input) > MAX_INPUT_BYTES:
            raise CommitmentError(f"job input is {len(self.input)} bytes; the limit is {MAX_INPUT_BYTES}")
        if len(self.signature) != 65:
            raise CommitmentError("a signature is 65 bytes (r, s, v)")
        r, s, bit = self.signature[:32], int.from_bytes(self.signature[32:64], "big"), recovery_bit(self.signature[64])
        if bit is None:
            raise CommitmentError(f"signature v is {self.signature[64]}: not 0, 1, 27, 28 or 35+")
        if s >= UPPER_BIT:
            raise CommitmentError("signature s does not fit the compact form (use canonical_signature)")
        vs = s | (bit << 255)
        return (self.job_id, self.model_id, self.input_root, self.output_root, merkle.keccak(self.input),
                len(self.input), self.node, r, vs.to_bytes(32, "big"))

    def posted_tuple(self) -> tuple:
        """The `PostedLeaf` struct a coordinator sends: no model, node or
        input hash (those come from the leaf's run and its input bytes); job
        id and input length share one word."""
        job_id, _, input_root, output_root, _, input_len, _, r, vs = self.as_tuple()
        return (int.from_bytes(job_id, "big") << 128 | input_len, input_root, output_root, r, vs)

    @classmethod
    def from_posted(cls, leaf: tuple, node: str, model_id: int, input: bytes) -> "ResultLeaf":
        """Rebuild a leaf from post_batch's decoded PostedLeaf, its run and its input."""
        job, input_root, output_root, r, vs = leaf
        job_id, input_len = (job >> 128).to_bytes(16, "big"), job & ((1 << 128) - 1)
        return cls.from_tuple((job_id, model_id, input_root, output_root, merkle.keccak(input), input_len, node,
                               r, vs), input)

    @classmethod
    def from_tuple(cls, leaf: tuple, input: bytes) -> "ResultLeaf":
        """Rebuild a leaf from the struct and its input (as decoded from calldata)."""
        job_id, model_id, input_root, output_root, input_hash, input_len, node, r, vs = leaf
        if len(input) != input_len or merkle.keccak(input) != bytes(input_hash):
            raise CommitmentError("input does not match the leaf's input hash")
        vs = int.from_bytes(bytes(vs), "big")
        s, v = vs & ((1 << 255) - 1), 27 + (vs >> 255)
        return cls(bytes(job_id), model_id, bytes(input_root), bytes(output_root), to_checksum_address(node),
                   input, bytes(r) + s.to_bytes(32, "big") + bytes([v]))

    def signer(self, chain_id: int, rollup: str) -> str | None:
        """Who signed this leaf by the chain's rule (ResultRollup.leaf_signer),
        over exactly the (r, vs) that posting would put on-chain; None when
        the chain would see no signer."""
        try:
            record = self.as_tuple()
        except CommitmentError:
            return None
        return recover_compact(self.digest(chain_id, rollup), record[7], record[8])

    def signature_valid(self, chain_id: int, rollup: str) -> bool:
        """The on-chain signature rule: the leaf as posted recovers to its node."""
        signer = self.signer(chain_id, rollup)
        return signer is not None and signer.lower() == str(self.node).lower()

    def canonical(self, chain_id: int, rollup: str) -> "ResultLeaf | None":
        """This leaf with its signature in canonical form; None unless the
        signature (in any accepted form) proves the leaf's node signed it."""
        sig = canonical_signature(self.signature, self.digest(chain_id, rollup), self.node)
        return None if sig is None else replace(self, signature=sig)

    @property
    def hash(self) -> bytes:
        return merkle.keccak(encode([LEAF_ABI], [self.as_tuple()]))


class Batch:
    """A batch's Merkle tree over leaf hashes, as the rollup computes it."""

    def __init__(self, leaves: list[ResultLeaf]):
        if not 0 < len(leaves) <= MAX_LEAVES:
            raise CommitmentError(f"a batch holds 1 to {MAX_LEAVES} leaves, got {len(leaves)}")
        self.leaves = leaves
        self.records = [leaf.as_tuple() for leaf in leaves]  # what challenges and proofs take
        self.posted = [leaf.posted_tuple() for leaf in leaves]  # what post_batch takes, with runs
        self.runs: list[tuple[str, int, int]] = []  # (node, model id, count) over consecutive leaves
        for leaf in leaves:
            if self.runs and self.runs[-1][:2] == (leaf.node, leaf.model_id):
                self.runs[-1] = (leaf.node, leaf.model_id, self.runs[-1][2] + 1)
            else:
                self.runs.append((leaf.node, leaf.model_id, 1))
        self.inputs = b"".join(leaf.input for leaf in leaves)
        if len(self.inputs) > MAX_INPUTS_BYTES:
            raise CommitmentError(f"a batch carries at most {MAX_INPUTS_BYTES} input bytes, got {len(self.inputs)}")
        self.tree = merkle.levels([leaf.hash for leaf in leaves])

    @classmethod
    def from_calldata(cls, posted: list, runs: list, inputs: bytes) -> "Batch":
        """Rebuild a posted batch from post_batch's decoded arguments alone."""
        owners = [(node, model_id) for node, model_id, count in runs for _ in range(count)]
        if len(owners) != len(posted):
            raise CommitmentError("runs do not cover the leaves")
        leaves, offset = [], 0
        for record, (node, model_id) in zip(posted, owners):
            n = record[0] & ((1 << 128) - 1)
            leaves.append(ResultLeaf.from_posted(record, node, model_id, bytes(inputs[offset:offset + n])))
            offset += n
        return cls(leaves)

    @property
    def calldata(self) -> tuple:
        """The arguments of ResultRollup.post_batch."""
        return self.posted, self.runs, self.inputs

    @property
    def root(self) -> bytes:
        return self.tree[-1][0]

    @property
    def data_hash(self) -> bytes:
        return merkle.keccak(self.inputs)

    def proof(self, index: int) -> list[bytes]:
        return merkle.proof(self.tree, index)

    def challenge_args(self, batch_id: int, index: int, model_header: bytes) -> tuple:
        """The arguments of DisputeGame.challenge for leaf `index`."""
        return batch_id, index, self.records[index], self.proof(index), self.leaves[index].input, model_header
