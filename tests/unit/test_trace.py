"""Pure logic of the commitments: Merkle trees, tensors, leaves, bisection."""

import numpy as np
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from opinfer.errors import CommitmentError
from opinfer.semantics import merkle
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.program import Program
from opinfer.semantics.quant import requant
from opinfer.semantics.tensor import CHUNK, TensorTree, chunk_hash
from opinfer.trace import bisection
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.state import Trace
from opinfer.trace.testing import random_program, toy_job


def test_merkle_proofs_fold_to_root_for_every_leaf_and_size():
    for n in range(1, 12):
        leaves = [merkle.keccak(bytes([i])) for i in range(n)]
        tree = merkle.levels(leaves)
        for i in range(n):
            assert merkle.fold(i, leaves[i], merkle.proof(tree, i)) == tree[-1][0]
        # A wrong leaf or index does not fold to the root.
        assert merkle.fold(0, b"\x01" * 32, merkle.proof(tree, 0)) != tree[-1][0]


def test_fold_rejects_index_beyond_tree():
    with pytest.raises(CommitmentError):
        merkle.fold(4, merkle.ZERO32, [merkle.ZERO32, merkle.ZERO32])


def test_ceil_log2_matches_definition():
    for n in range(0, 70):
        d = merkle.ceil_log2(n)
        assert (1 << d) >= n and (d == 0 or (1 << (d - 1)) < n)


def test_tensor_tree_nodes_are_consistent_down_to_chunks():
    rng = np.random.default_rng(1)
    t = TensorTree.build(rng.integers(-300, 300, size=(3, 40)))
    assert t.depth == 2 + 2
    assert t.node(0, 0) == t.root
    for level in range(t.depth):
        for index in range(1 << level):
            left, right = t.node(level + 1, 2 * index), t.node(level + 1, 2 * index + 1)
            assert merkle.keccak(left + right) == t.node(level, index)
    for leaf in range(1 << t.depth):
        assert chunk_hash(t.chunk(leaf)) == t.node(t.depth, leaf)
    # Padding rows and columns hold zeros.
    assert t.chunk((3 << t.col_bits) + 0) == [0] * CHUNK
    assert t.chunk((0 << t.col_bits) + 2)[8:] == [0] * 8


def test_negative_values_encode_as_twos_complement_words():
    a = chunk_hash([-1] + [0] * 15)
    b = merkle.keccak(b"\xff" * 32 + b"\x00" * 32 * 15)
    assert a == b


def test_requant_rounds_ties_up_and_clamps():
    acc = np.array([3, 5, -3, -5, 1000, -1000])
    # multiplier 1, shift 1: x/2 rounded half up.
    assert requant(acc, 1, 1, -128, 127).tolist() == [2, 3, -1, -2, 127, -128]
    assert requant(np.array([7]), 3, 0, -128, 127).tolist() == [21]


def test_trace_state_roots_extend_one_position_at_a_time():
    rng = np.random.default_rng(2)
    program = random_program(rng, [24, 40, 24])
    trace = Trace.of(program, toy_job(2))
    for i in range(trace.n):
        proof = trace.state_proof(i, i + 1)
        assert proof == trace.state_proof(i + 1, i + 1)
        assert merkle.fold(i + 1, merkle.ZERO32, proof) == trace.state_root(i)
        assert merkle.fold(i + 1, trace.trees[i + 1].root, proof) == trace.state_root(i + 1)


def test_program_is_deterministic_and_model_root_binds_weights():
    rng = np.random.default_rng(3)
    program = random_program(rng, [16, 16])
    x = toy_job(3, tokens=6)
    assert np.array_equal(program.run(x)[-1], program.run(x)[-1])
    other = Program(program.ops, [w.copy() for w in program.weights], program.widths)
    other.weights[0][0, 0] += 1
    assert other.model_root != program.model_root


def test_leaf_digest_is_standard_eip712_and_signature_recovers():
    key = Account.create()
    leaf = ResultLeaf(job_id=b"\x11" * 16, model_id=7, input_root=b"\x22" * 32,
                      output_root=b"\x33" * 32, node=key.address, input=b"tokens")
    rollup = "0x" + "ab" * 20
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"},
            ],
            "ResultLeaf": [
                {"name": "jobId", "type": "bytes16"}, {"name": "modelId", "type": "uint256"},
                {"name": "inputRoot", "type": "bytes32"}, {"name": "outputRoot", "type": "bytes32"},
                {"name": "inputHash", "type": "bytes32"}, {"name": "node", "type": "address"},
            ],
        },
        "primaryType": "ResultLeaf",
        "domain": {"name": "opinfer", "version": "1", "chainId": 31337, "verifyingContract": rollup},
        "message": {"jobId": leaf.job_id, "modelId": 7, "inputRoot": leaf.input_root,
                    "outputRoot": leaf.output_root, "inputHash": merkle.keccak(b"tokens"), "node": key.address},
    }
    signable = encode_typed_data(full_message=typed)
    expected = merkle.keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert leaf.digest(31337, rollup) == expected
    signed = leaf.signed(key.key, 31337, rollup)
    assert Account._recover_hash(expected, signature=signed.signature) == key.address
    assert ResultLeaf.from_tuple(signed.as_tuple(), signed.input) == signed
    with pytest.raises(CommitmentError):
        ResultLeaf.from_tuple(signed.as_tuple(), b"other input")


def test_batch_rejects_bad_sizes_and_proves_every_leaf():
    with pytest.raises(CommitmentError):
        Batch([])
    leaves = [ResultLeaf(bytes([i]) * 16, 1, b"\0" * 32, b"\0" * 32, "0x" + "01" * 20).signed("0x" + "11" * 32, 1, "0x" + "22" * 20) for i in range(5)]
    batch = Batch(leaves)
    for i, leaf in enumerate(leaves):
        assert merkle.fold(i, leaf.hash, batch.proof(i)) == batch.root
    with pytest.raises(CommitmentError):
        ResultLeaf(b"\0" * 16, 1, b"\0" * 32, b"\0" * 32, "0x" + "01" * 20, input=b"x" * 5000).as_tuple()
    rebuilt = Batch.from_calldata(*batch.calldata)
    assert rebuilt.root == batch.root and rebuilt.leaves == leaves


def test_dissection_points_cover_interval_like_the_contract():
    assert bisection.dissection_points(0, 10, 4) == [2, 5, 7]
    assert bisection.dissection_points(3, 5, 16) == [4]
    for lo, hi, k in [(0, 10, 4), (7, 100, 16), (0, 3, 2)]:
        pts = [lo] + bisection.dissection_points(lo, hi, k) + [hi]
        parts = len(pts) - 1
        for j in range(parts):
            assert bisection.part_bounds(lo, hi, parts, j) == (pts[j], pts[j + 1])
    with pytest.raises(CommitmentError):
        bisection.dissection_points(4, 5, 4)


def test_first_disagreement():
    assert bisection.first_disagreement([1, 2, 3], [1, 5, 3]) == 1
    with pytest.raises(CommitmentError):
        bisection.first_disagreement([1, 2], [1, 2])


def test_brownie_shim_rewrites_vyper_04_source_maps():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "compat" / "opinfer_brownie_vyper04.py"
    spec = importlib.util.spec_from_file_location("shim_under_test", path)
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    output = {"contracts": {"a.vy": {"A": {"evm": {"deployedBytecode": {
        "sourceMap": {"pc_pos_map_compressed": "1:2:0:-;", "pc_pos_map": {}}}}}}}}
    shim.normalise_source_maps(output)
    assert output["contracts"]["a.vy"]["A"]["evm"]["deployedBytecode"]["sourceMap"] == "1:2:0:-;"
    # Strings (older Vyper) pass through untouched.
    shim.normalise_source_maps(output)
    assert output["contracts"]["a.vy"]["A"]["evm"]["deployedBytecode"]["sourceMap"] == "1:2:0:-;"


def test_job_input_round_trips_and_rejects_malformed_bytes():
    job = JobInput((5, 900, 65534), max_tokens=7, temperature_milli=700, top_p_q=60000, seed=(1 << 63) + 9,
                   stop_sequences=((2,), (17, 18)))
    data = job.to_bytes()
    assert JobInput.from_bytes(data) == job
    t0 = job.tensor()
    assert t0.shape == (1, 10 + 5 + 3) and t0[0, job.tokens_at:].tolist() == [5, 900, 65534]
    for bad in (data[:-1], data[:-2], b"\x00\x02" + data[2:], data[:18]):
        with pytest.raises(CommitmentError):
            JobInput.from_bytes(bad)
    with pytest.raises(CommitmentError, match="at least one token"):
        JobInput(())
    with pytest.raises(CommitmentError, match="top_p_q"):
        JobInput((1,), top_p_q=0)


def test_job_input_version_2_carries_penalties_and_version_1_is_unchanged():
    plain = JobInput((5, 900), max_tokens=3, stop_sequences=((2,),))
    assert plain.version == 1 and plain.to_bytes()[:2] == b"\x00\x01"      # earlier jobs keep their bytes
    job = JobInput((5, 900), max_tokens=3, stop_sequences=((2,),), presence_q=-8192, frequency_q=4096,
                   logit_bias=((7, -25600), (49151, 256)))
    w = job.words()
    assert job.version == 2 and w[0] == 2
    # after the stop words [2, 0xFFFF]: presence, frequency (int16 words), B, the pairs, then the tokens
    assert w[12:12 + 3 + 4] == [0x10000 - 8192, 4096, 2, 7, 0x10000 - 25600, 49151, 256]
    assert job.tokens_at == 10 + 2 + 3 + 4 and w[job.tokens_at:] == [5, 900]
    assert JobInput.from_bytes(job.to_bytes()) == job
    # a version-2 input without penalties keeps its version (and bytes) through a round trip
    zero = JobInput((5,), max_tokens=1, version=2)
    assert JobInput.from_bytes(zero.to_bytes()) == zero and zero.tokens_at == 13
    for bad in (job.to_bytes()[:-2], job.to_bytes() + b"\x00\x05", zero.to_bytes()[:22]):
        with pytest.raises(CommitmentError):
            JobInput.from_bytes(bad)
    with pytest.raises(CommitmentError, match="version 2"):
        JobInput((1,), presence_q=1, version=1)
    with pytest.raises(CommitmentError, match="int16"):
        JobInput((1,), frequency_q=1 << 15)


def test_packed_weight_rows_hash_like_words_of_packed_values():
    from opinfer.semantics.tensor import chunk_hashes
    row = np.arange(-300, 300)
    # 2-byte values: 256 per chunk; the packing is big-endian, first value most significant.
    packed = chunk_hashes(row, 2)
    assert len(packed) == 3
    first = b"".join(int(v).to_bytes(2, "big", signed=True) for v in row[:256])
    assert packed[0] == merkle.keccak(first)
    with pytest.raises(CommitmentError, match="out of range"):
        chunk_hashes(np.array([128]), 1)
