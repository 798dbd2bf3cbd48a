"""ResultRollup: batches as calldata, deadlines, finalization, proofs, forged leaves."""

import brownie
import pytest
from brownie import ResultRollup, accounts, chain

from conftest import PROGRAM_HEADER, make_leaf, post
from opinfer.trace.leaf import Batch, ResultLeaf

STATUS_UNKNOWN, STATUS_POSTED, STATUS_DISPUTED, STATUS_FINAL, STATUS_INVALID = 0, 1, 2, 3, 4


@pytest.fixture
def leaves(system, staked, nodes, model_id, honest_trace):
    return [make_leaf(honest_trace, nodes[i % 3], model_id, system.rollup, job=i + 1) for i in range(5)]


def test_post_batch_stores_root_data_hash_and_deadline(system, coordinator, leaves, params):
    batch_id, batch, tx = post(system, coordinator, leaves)
    root, data_hash, count, deadline, poster, finalized = system.rollup.batch(batch_id)
    assert bytes(root) == batch.root and bytes(data_hash) == batch.data_hash
    assert count == 5 and deadline == tx.timestamp + params.challenge_window
    assert poster == coordinator and not finalized
    ev = tx.events["BatchPosted"]
    assert ev["batch_id"] == batch_id and bytes(ev["root"]) == batch.root
    # Anyone can rebuild every leaf from the transaction's calldata alone.
    posted, runs, inputs = system.rollup.post_batch.decode_input(tx.input)
    assert Batch.from_calldata(posted, runs, bytes(inputs)).leaves == leaves
    for i in range(5):
        assert system.rollup.verify_inclusion(batch_id, i, leaves[i].hash, batch.proof(i))
        assert system.rollup.verify_leaf(batch_id, i, batch.records[i], batch.proof(i))
        assert system.rollup.leaf_status(batch_id, i) == STATUS_POSTED
    assert system.rollup.leaf_status(batch_id, 5) == STATUS_UNKNOWN


def test_leaf_digest_and_signer_match_python(system, leaves, nodes):
    leaf = leaves[0]
    assert bytes(system.rollup.leaf_digest(leaf.as_tuple())) == leaf.digest(chain.id, system.rollup.address)
    assert system.rollup.leaf_signer(leaf.as_tuple()) == nodes[0]
    # A signature for another chain id or another rollup does not recover to the node.
    other_chain = leaf.signed(nodes[0].private_key, chain.id + 1, system.rollup.address)
    other_rollup = leaf.signed(nodes[0].private_key, chain.id, accounts[5].address)
    assert system.rollup.leaf_signer(other_chain.as_tuple()) != nodes[0]
    assert system.rollup.leaf_signer(other_rollup.as_tuple()) != nodes[0]


def test_bad_proofs_are_rejected(system, coordinator, leaves):
    batch_id, batch, _ = post(system, coordinator, leaves)
    proof = batch.proof(2)
    assert not system.rollup.verify_inclusion(batch_id, 3, leaves[2].hash, proof)
    assert not system.rollup.verify_inclusion(batch_id, 2, leaves[3].hash, proof)
    assert not system.rollup.verify_inclusion(batch_id, 2, leaves[2].hash, proof[:-1])
    assert not system.rollup.verify_inclusion(batch_id, 9, leaves[2].hash, proof)
    assert not system.rollup.verify_inclusion(batch_id + 1, 2, leaves[2].hash, proof)


def test_post_rejections_change_nothing(system, coordinator, leaves, nodes, model_id, honest_trace, deployer):
    rollup = system.rollup
    count = rollup.batch_count()
    batch = Batch(leaves)
    records, runs, inputs = batch.calldata
    with brownie.reverts("ResultRollup: caller is not a coordinator"):
        rollup.post_batch(records, runs, inputs, {"from": accounts[6]})
    with brownie.reverts("ResultRollup: empty batch"):
        rollup.post_batch([], [], b"", {"from": coordinator})
    with brownie.reverts("ResultRollup: inputs too short"):
        rollup.post_batch(records, runs, inputs[:-1], {"from": coordinator})
    with brownie.reverts("ResultRollup: unused input bytes"):
        rollup.post_batch(records, runs, inputs + b"x", {"from": coordinator})
    with brownie.reverts("ResultRollup: runs do not cover leaves"):
        rollup.post_batch(records, runs[:-1], inputs, {"from": coordinator})
    with brownie.reverts("ResultRollup: runs exceed leaves"):
        rollup.post_batch(records, runs + [runs[-1]], inputs, {"from": coordinator})
    with brownie.reverts("ResultRollup: empty run"):
        rollup.post_batch(records, [(nodes[0].address, model_id, 0)] + runs, inputs, {"from": coordinator})
    with brownie.reverts("ResultRollup: node not staked"):
        rollup.post_batch(records, [(accounts[6].address, model_id, 5)], inputs, {"from": coordinator})
    with brownie.reverts("ResultRollup: model not active"):  # unknown ids are not active
        rollup.post_batch(records, [(nodes[0].address, 99, 5)], inputs, {"from": coordinator})
    system.registry.set_active(model_id, False, {"from": deployer})
    with brownie.reverts("ResultRollup: model not active"):
        rollup.post_batch(records, runs, inputs, {"from": coordinator})
    assert rollup.batch_count() == count


def test_finalize_after_deadline_once(system, coordinator, leaves, params):
    batch_id, batch, _ = post(system, coordinator, leaves)
    with brownie.reverts("ResultRollup: challenge window open"):
        system.rollup.finalize(batch_id, {"from": accounts[6]})
    with brownie.reverts("ResultRollup: unknown batch"):
        system.rollup.finalize(batch_id + 1, {"from": accounts[6]})
    chain.sleep(params.challenge_window + 1)
    chain.mine()
    tx = system.rollup.finalize(batch_id, {"from": accounts[6]})  # anyone may finalize
    assert tx.events["BatchFinalized"]["batch_id"] == batch_id
    with brownie.reverts("ResultRollup: already finalized"):
        system.rollup.finalize(batch_id, {"from": accounts[6]})
    assert all(system.rollup.leaf_status(batch_id, i) == STATUS_FINAL for i in range(5))


def test_disputed_leaf_does_not_finalize_but_the_rest_do(system, coordinator, leaves, challengers, params):
    batch_id, batch, _ = post(system, coordinator, leaves)
    system.game.challenge(*batch.challenge_args(batch_id, 3, PROGRAM_HEADER), {"from": challengers[0]})
    chain.sleep(params.challenge_window + 1)
    chain.mine()
    system.rollup.finalize(batch_id, {"from": coordinator})
    statuses = [system.rollup.leaf_status(batch_id, i) for i in range(5)]
    assert statuses == [STATUS_FINAL] * 3 + [STATUS_DISPUTED, STATUS_FINAL]


def test_forged_leaf_is_voided_without_slashing(system, coordinator, leaves, nodes):
    forged = ResultLeaf(**{**leaves[0].__dict__, "output_root": b"\x42" * 32})  # signature no longer matches
    batch_id, batch, _ = post(system, coordinator, [leaves[1], forged])
    with brownie.reverts("ResultRollup: signature is valid"):
        system.rollup.void_forged_leaf(batch_id, 0, batch.records[0], batch.proof(0), {"from": accounts[6]})
    with brownie.reverts("ResultRollup: leaf not in batch"):
        system.rollup.void_forged_leaf(batch_id, 0, batch.records[1], batch.proof(0), {"from": accounts[6]})
    stake = system.stake.slashable(nodes[0])
    tx = system.rollup.void_forged_leaf(batch_id, 1, batch.records[1], batch.proof(1), {"from": accounts[6]})
    assert tx.events["LeafInvalidated"]["reason"] == "forged signature"
    assert system.rollup.leaf_status(batch_id, 1) == STATUS_INVALID
    assert system.stake.slashable(nodes[0]) == stake
    with brownie.reverts("ResultRollup: leaf already invalid"):
        system.rollup.void_forged_leaf(batch_id, 1, batch.records[1], batch.proof(1), {"from": accounts[6]})


def test_admin_and_game_hooks_are_guarded(system, deployer):
    rollup = system.rollup
    with brownie.reverts("ResultRollup: caller is not the owner"):
        rollup.set_coordinator(accounts[6], True, {"from": accounts[6]})
    with brownie.reverts("ResultRollup: dispute game already set"):
        rollup.set_dispute_game(accounts[6], {"from": deployer})
    for hook in (rollup.mark_disputed, rollup.mark_undisputed, rollup.mark_invalid):
        with brownie.reverts("ResultRollup: caller is not the dispute game"):
            hook(1, 0, {"from": deployer})
    tx = rollup.set_coordinator(accounts[6], True, {"from": deployer})
    assert tx.events["CoordinatorSet"]["allowed"] is True


def test_constructor_rejects_zero_window(system, deployer):
    with brownie.reverts("ResultRollup: zero challenge window"):
        ResultRollup.deploy(system.stake, system.registry, 0, {"from": deployer})


def test_game_deploy_rejects_short_unbonding_delay(system, deployer, treasury):
    from brownie import DisputeGame, StakeManager
    short = StakeManager.deploy(10**18, 100, 5000, treasury, {"from": deployer})
    rollup = ResultRollup.deploy(short, system.registry, 600, {"from": deployer})
    with brownie.reverts("DisputeGame: unbonding delay too short"):
        DisputeGame.deploy(short, rollup, system.registry, system.verifier, 4, 300, 300, 1, {"from": deployer})
    with brownie.reverts("DisputeGame: arity must be a power of two in [2, 16]"):
        DisputeGame.deploy(system.stake, system.rollup, system.registry, system.verifier, 3, 300, 300, 1, {"from": deployer})
    with brownie.reverts("DisputeGame: arity must be a power of two in [2, 16]"):
        DisputeGame.deploy(system.stake, system.rollup, system.registry, system.verifier, 32, 300, 300, 1, {"from": deployer})
    with brownie.reverts("DisputeGame: zero clock"):
        DisputeGame.deploy(system.stake, system.rollup, system.registry, system.verifier, 4, 0, 300, 1, {"from": deployer})
    with brownie.reverts("DisputeGame: zero bond"):
        DisputeGame.deploy(system.stake, system.rollup, system.registry, system.verifier, 4, 300, 300, 0, {"from": deployer})
    with brownie.reverts("DisputeGame: zero trace budget"):
        DisputeGame.deploy(system.stake, system.rollup, system.registry, system.verifier, 4, 300, 0, 1, {"from": deployer})
    fresh = ResultRollup.deploy(short, system.registry, 600, {"from": deployer})
    with brownie.reverts("ResultRollup: game is zero"):
        fresh.set_dispute_game("0x" + "00" * 20, {"from": deployer})
    with brownie.reverts("StakeManager: game is zero"):
        short.set_dispute_game("0x" + "00" * 20, {"from": deployer})


def test_full_batch_of_max_leaves(system, coordinator, nodes, model_id, honest_trace):
    leaves = [make_leaf(honest_trace, nodes[0], model_id, system.rollup, job=i) for i in range(100)]
    batch_id, batch, tx = post(system, coordinator, leaves)
    assert system.rollup.verify_leaf(batch_id, 99, batch.records[99], batch.proof(99))
    assert isinstance(Batch(leaves).root, bytes)


# ---------------------------------------------------------------- issue 14, point 1: one signature rule

def high_s_twin(signature: bytes) -> bytes:
    """The other valid ECDSA signature of the same digest: s -> n - s, parity flipped."""
    from opinfer.trace.leaf import SECP256K1_N
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])


def test_high_s_twin_of_a_lie_is_normalised_then_challenged_and_slashed(system, staked, coordinator, nodes,
                                                                        challengers, model_id, program, job_input,
                                                                        honest_trace):
    """Attack: a node answers a wrong result with the high-s twin of its
    signature. It proves the node signed (eth_account recovers the node), but
    its compact encoding is garbage, so posted as is the leaf could not be
    challenged. Every off-chain check now applies the chain's rule, and the
    twin normalises to the canonical form, which is challenged and slashed."""
    from dataclasses import replace

    from eth_account import Account

    from conftest import CHALLENGER_WON, Driver, corrupted_trace
    from opinfer.errors import CommitmentError
    rollup, node = system.rollup, nodes[0]
    bad = corrupted_trace(program, job_input, 4, 0, 5, delta=120)
    signed = make_leaf(bad, node, model_id, rollup, job=77)
    twin = replace(signed, signature=high_s_twin(signed.signature))
    digest = twin.digest(chain.id, rollup.address)
    assert Account._recover_hash(digest, signature=twin.signature) == node.address  # the twin is a signature
    # Not expressible compactly: nothing that would post it (or report it valid) accepts it as is.
    with pytest.raises(CommitmentError, match="compact"):
        twin.as_tuple()
    assert not twin.signature_valid(chain.id, rollup.address)
    from coordinator.poster import signature_ok
    assert not signature_ok(twin, chain.id, rollup.address)
    # Normalised: the node's own canonical signature, which the chain accepts and a challenge takes.
    fixed = twin.canonical(chain.id, rollup.address)
    assert fixed is not None and fixed.signature == signed.signature
    assert rollup.leaf_signer(fixed.as_tuple()) == node and fixed.signature_valid(chain.id, rollup.address)
    batch_id, batch, _ = post(system, coordinator, [fixed])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, PROGRAM_HEADER),
                                {"from": challengers[0]}).return_value
    end = Driver(system, gid, node, bad, challengers[0], honest_trace).play()
    assert end["status"] == CHALLENGER_WON
    assert system.stake.slashable(node) == 0
    assert rollup.leaf_status(batch_id, 0) == STATUS_INVALID


def test_colluding_coordinator_posting_a_non_canonical_encoding_gains_nothing(system, staked, coordinator, nodes,
                                                                              model_id, program, job_input):
    """Attack: a colluding coordinator posts the lie with the twin's bits
    packed into the compact form directly (what the old as_tuple did). The
    chain sees no node signature: the SDK's check (the chain's rule) reports
    the signature bad, and anyone can void the leaf, so it never counts as
    a result."""
    from dataclasses import replace

    from conftest import corrupted_trace
    from opinfer.trace.leaf import UPPER_BIT
    rollup, node = system.rollup, nodes[0]
    signed = make_leaf(corrupted_trace(program, job_input, 4, 0, 5, delta=120), node, model_id, rollup, job=78)
    twin = high_s_twin(signed.signature)
    s = int.from_bytes(twin[32:64], "big")
    garbled = replace(signed, signature=twin[:32] + (s & (UPPER_BIT - 1)).to_bytes(32, "big") + bytes([28]))
    batch_id, batch, _ = post(system, coordinator, [garbled])
    assert rollup.leaf_signer(batch.records[0]) != node
    assert not garbled.signature_valid(chain.id, rollup.address)
    with brownie.reverts("DisputeGame: bad node signature"):
        system.game.challenge(*batch.challenge_args(batch_id, 0, PROGRAM_HEADER), {"from": accounts[2]})
    rollup.void_forged_leaf(batch_id, 0, batch.records[0], batch.proof(0), {"from": accounts[6]})
    assert rollup.leaf_status(batch_id, 0) == STATUS_INVALID


def test_python_signature_rule_is_the_contracts_for_every_encoding(system, leaves, nodes):
    """recover_compact (used by the coordinator, the SDK and the challenger)
    returns exactly what ResultRollup.leaf_signer returns, high s included."""
    from opinfer.trace.leaf import SECP256K1_HALF_N, SECP256K1_N, UPPER_BIT, recover_compact
    leaf = leaves[0]
    record = list(leaf.as_tuple())
    digest = leaf.digest(chain.id, system.rollup.address)
    r0 = int.from_bytes(record[7], "big")
    s0 = int.from_bytes(record[8], "big") & (UPPER_BIT - 1)
    cases = [(r0, s0), (r0, SECP256K1_HALF_N + 1), (r0, UPPER_BIT - 1), (r0, SECP256K1_HALF_N), (0, s0), (r0, 0),
             (SECP256K1_N, s0), (SECP256K1_N + 1, s0), (2**256 - 1, s0), (5, s0)]
    for r, s in cases:
        for bit in (0, 1):
            vs = (s | bit << 255).to_bytes(32, "big")
            on_chain = system.rollup.leaf_signer(record[:7] + [r.to_bytes(32, "big"), vs])
            mine = recover_compact(digest, r.to_bytes(32, "big"), vs)
            assert (mine or "0x" + "00" * 20).lower() == on_chain.lower(), (hex(r), hex(s), bit)
    # The high-s half is accepted on-chain (it recovers someone), as the precompile does.
    high = (SECP256K1_HALF_N + 1).to_bytes(32, "big")
    assert system.rollup.leaf_signer(record[:7] + [record[7], high]) != "0x" + "00" * 20


# ---------------------------------------------------------------- issue 14, point 2: per-leaf limits

def test_leaf_input_longer_than_a_challenge_takes_is_refused(system, coordinator, nodes, model_id, leaves):
    """Attack: a 5,000-byte input fits the batch's 16 KiB but not
    DisputeGame.challenge's Bytes[4096], so the leaf could never be disputed."""
    big = bytes(range(256)) * 19 + bytes(136)
    assert len(big) == 5000
    job = (0x5000 << 128) | len(big)
    posted = [(job, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32)]
    with brownie.reverts("ResultRollup: leaf input above 4096 bytes"):
        system.rollup.post_batch(posted, [(nodes[0], model_id, 1)], big, {"from": coordinator})
    # The limit itself still posts: 4,096 bytes.
    ok = [((0x4096 << 128) | 4096,) + posted[0][1:]]
    tx = system.rollup.post_batch(ok, [(nodes[0], model_id, 1)], big[:4096], {"from": coordinator})
    assert tx.events["BatchPosted"]["leaf_count"] == 1
