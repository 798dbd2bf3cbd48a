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
