"""Whole dispute games on anvil: honest node wins, cheaters lose, clocks."""

import brownie
import numpy as np
import pytest
from brownie import chain

from opinfer.trace.state import Trace

from conftest import (ACTIVE, CHALLENGER_WON, NODE_WON, PROGRAM_HEADER, VOID, Driver, corrupted_trace, game_state,
                      make_leaf, post)

STATUS_POSTED, STATUS_DISPUTED, STATUS_FINAL, STATUS_INVALID = 1, 2, 3, 4


@pytest.fixture
def posted(system, staked, coordinator, nodes, model_id, honest_trace):
    """Batch 1: leaf 0 honest (node 0), leaf 1 honest (node 1)."""
    leaves = [make_leaf(honest_trace, nodes[0], model_id, system.rollup, job=1),
              make_leaf(honest_trace, nodes[1], model_id, system.rollup, job=2)]
    batch_id, batch, _ = post(system, coordinator, leaves)
    return batch_id, batch


def open_game(system, batch_id, batch, index, challenger):
    tx = system.game.challenge(*batch.challenge_args(batch_id, index, PROGRAM_HEADER), {"from": challenger})
    return tx.return_value


def balances(system, accounts_):
    return {a.address: system.stake.claimable(a) for a in accounts_}


@pytest.mark.parametrize("position,row,col", [(4, 0, 5), (1, 0, 33), (1, 0, 39), (3, 0, 15)])
def test_cheating_node_loses_and_is_slashed(system, staked, coordinator, nodes, challengers, model_id,
                                            program, job_input, honest_trace, treasury, position, row, col):
    node, challenger = nodes[0], challengers[0]
    bad = corrupted_trace(program, job_input, position, row, col, delta=120)
    assert bad.output_root != honest_trace.output_root
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, node, model_id, system.rollup)])
    gid = open_game(system, batch_id, batch, 0, challenger)
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_DISPUTED
    stake_before = system.stake.slashable(node)
    driver = Driver(system, gid, node, bad, challenger, honest_trace)
    end = driver.play()
    assert end["status"] == CHALLENGER_WON
    # The bisection narrowed to the corrupted op and element.
    assert end["hi"] == position and (end["row"], end["col"]) == (row, col)
    assert system.stake.slashable(node) == 0
    reward = stake_before * system.params.challenger_reward_bps // 10_000
    assert system.stake.claimable(challenger) == reward
    assert system.stake.claimable(treasury) == stake_before - reward
    assert system.stake.bond(challenger) == 10**18  # bond returned in full
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_INVALID
    chain.sleep(system.params.challenge_window + 1)
    system.rollup.finalize(batch_id, {"from": coordinator})
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_INVALID
    # The challenger collects its reward.
    before = challenger.balance()
    system.stake.claim({"from": challenger})
    assert challenger.balance() == before + reward


def test_honest_node_wins_and_takes_the_bond(system, posted, nodes, challengers, program, job_input,
                                             honest_trace, coordinator):
    batch_id, batch = posted
    node, challenger = nodes[0], challengers[0]
    # A wrong (or malicious) challenger: its trace differs at op 2.
    wrong = corrupted_trace(program, job_input, 2, 0, 7)
    gid = open_game(system, batch_id, batch, 0, challenger)
    end = Driver(system, gid, node, honest_trace, challenger, wrong).play()
    assert end["status"] == NODE_WON
    assert system.stake.claimable(node) == system.params.challenge_bond
    assert system.stake.bond(challenger) == 10**18 - system.params.challenge_bond
    assert system.stake.slashable(node) == 2 * system.params.min_stake
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_POSTED
    chain.sleep(system.params.challenge_window + 1)
    system.rollup.finalize(batch_id, {"from": coordinator})
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_FINAL


def game_at_step(system, posted, node, challenger, honest_trace, wrong) -> tuple[int, Driver]:
    """An honest node against a challenger holding `wrong`, played up to the step."""
    batch_id, batch = posted
    gid = open_game(system, batch_id, batch, 0, challenger)
    driver = Driver(system, gid, node, honest_trace, challenger, wrong)
    driver.play(until_phase=9)
    return gid, driver


def test_step_called_by_node_upholds_honest_claim(system, posted, nodes, challengers, program, job_input,
                                                  honest_trace):
    wrong = corrupted_trace(program, job_input, 4, 0, 0)
    gid, driver = game_at_step(system, posted, nodes[0], challengers[0], honest_trace, wrong)
    # The challenger refuses to step; the node steps itself with its own witness.
    driver.step(nodes[0], trace=honest_trace)
    assert game_state(system.game, gid)["status"] == NODE_WON


def test_rechallenge_after_failed_challenge(system, posted, nodes, challengers, program, job_input, honest_trace):
    batch_id, batch = posted
    wrong = corrupted_trace(program, job_input, 3, 0, 2)
    gid = open_game(system, batch_id, batch, 1, challengers[0])
    assert Driver(system, gid, nodes[1], honest_trace, challengers[0], wrong).play()["status"] == NODE_WON
    with brownie.reverts("DisputeGame: already challenged by caller"):
        open_game(system, batch_id, batch, 1, challengers[0])
    gid2 = open_game(system, batch_id, batch, 1, challengers[1])
    assert system.rollup.leaf_status(batch_id, 1) == STATUS_DISPUTED
    assert Driver(system, gid2, nodes[1], honest_trace, challengers[1], wrong).play()["status"] == NODE_WON
    assert system.stake.claimable(nodes[1]) == 2 * system.params.challenge_bond


def test_concurrent_challenges_second_voided_after_fraud(system, staked, coordinator, nodes, challengers,
                                                          model_id, program, job_input, honest_trace):
    bad = corrupted_trace(program, job_input, 4, 0, 1)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, nodes[2], model_id, system.rollup)])
    g1 = open_game(system, batch_id, batch, 0, challengers[0])
    g2 = open_game(system, batch_id, batch, 0, challengers[1])
    assert system.rollup.open_games(batch_id, 0) == 2
    with brownie.reverts("DisputeGame: leaf not invalid"):
        system.game.void_after_fraud(g2, {"from": challengers[1]})
    Driver(system, g1, nodes[2], bad, challengers[0], honest_trace).play()
    system.game.void_after_fraud(g2, {"from": challengers[2]})
    assert game_state(system.game, g2)["status"] == VOID
    assert system.stake.bond(challengers[1]) == 10**18
    assert system.stake.open_disputes(nodes[2]) == 0
    assert system.rollup.open_games(batch_id, 0) == 0
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_INVALID


def test_node_timeout_loses(system, posted, nodes, challengers):
    batch_id, batch = posted
    gid = open_game(system, batch_id, batch, 0, challengers[0])
    with brownie.reverts("DisputeGame: clock not expired"):
        system.game.claim_timeout(gid, {"from": challengers[1]})
    chain.sleep(system.params.clock_budget + 1)
    chain.mine()
    system.game.claim_timeout(gid, {"from": challengers[1]})
    assert game_state(system.game, gid)["status"] == CHALLENGER_WON
    assert system.stake.slashable(nodes[0]) == 0


def test_challenger_timeout_loses_mid_game(system, posted, nodes, challengers, program, job_input, honest_trace):
    batch_id, batch = posted
    wrong = corrupted_trace(program, job_input, 2, 0, 0)
    gid = open_game(system, batch_id, batch, 0, challengers[0])
    driver = Driver(system, gid, nodes[0], honest_trace, challengers[0], wrong)
    driver.play(until_phase=3)  # challenger to pick
    left_node, left_chal = system.game.time_left(gid)
    chain.sleep(int(left_chal) + 1)
    chain.mine()
    with brownie.reverts("DisputeGame: challenger clock expired"):
        driver.challenger_move()
    system.game.claim_timeout(gid, {"from": nodes[0]})
    assert game_state(system.game, gid)["status"] == NODE_WON
    assert system.stake.claimable(nodes[0]) == system.params.challenge_bond


def test_inconsistent_node_cannot_reveal_tensor_and_times_out(system, posted, nodes, challengers, program,
                                                              job_input, honest_trace):
    """A node that answers the bisection with roots that do not extend each
    other is stuck at the tensor reveal and loses on its clock."""
    batch_id, batch = posted
    wrong = corrupted_trace(program, job_input, 1, 0, 0)
    gid = open_game(system, batch_id, batch, 0, challengers[0])
    g = game_state(system.game, gid)
    system.game.open_trace(gid, honest_trace.state_root(4), honest_trace.state_proof(4, 4), {"from": nodes[0]})
    garbage = [bytes([i]) * 32 for i in range(1, 4)]
    system.game.bisect(gid, garbage, {"from": nodes[0]})
    system.game.pick(gid, garbage, 0, {"from": challengers[0]})  # (0, 1): S_1 is garbage
    g = game_state(system.game, gid)
    assert (g["lo"], g["hi"], g["phase"]) == (0, 1, 4)
    with brownie.reverts("DisputeGame: tensor does not extend agreed state"):
        system.game.reveal_tensor(gid, honest_trace.trees[1].root, honest_trace.state_proof(1, 1),
                                  program.header(0), {"from": nodes[0]})
    chain.sleep(system.params.clock_budget + 1)
    chain.mine()
    system.game.claim_timeout(gid, {"from": challengers[0]})
    assert game_state(system.game, gid)["status"] == CHALLENGER_WON
    del wrong


def test_wrong_party_and_wrong_phase_revert(system, posted, nodes, challengers, honest_trace):
    batch_id, batch = posted
    gid = open_game(system, batch_id, batch, 0, challengers[0])
    args = (gid, honest_trace.state_root(4), honest_trace.state_proof(4, 4))
    with brownie.reverts("DisputeGame: caller is not the node"):
        system.game.open_trace(*args, {"from": challengers[0]})
    with brownie.reverts("DisputeGame: wrong phase"):
        system.game.bisect(gid, [], {"from": nodes[0]})
    with brownie.reverts("DisputeGame: output not in final state"):
        system.game.open_trace(gid, b"\x01" * 32, honest_trace.state_proof(4, 4), {"from": nodes[0]})
    system.game.open_trace(*args, {"from": nodes[0]})
    with brownie.reverts("DisputeGame: wrong number of claims"):
        system.game.bisect(gid, [b"\x00" * 32], {"from": nodes[0]})
    system.game.bisect(gid, [honest_trace.state_root(p) for p in (1, 2, 3)], {"from": nodes[0]})
    with brownie.reverts("DisputeGame: caller is not the challenger"):
        system.game.pick(gid, [honest_trace.state_root(p) for p in (1, 2, 3)], 0, {"from": nodes[0]})
    with brownie.reverts("DisputeGame: claims do not match"):
        system.game.pick(gid, [b"\x00" * 32] * 3, 0, {"from": challengers[0]})
    with brownie.reverts("DisputeGame: part out of range"):
        system.game.pick(gid, [honest_trace.state_root(p) for p in (1, 2, 3)], 4, {"from": challengers[0]})
    with brownie.reverts("DisputeGame: unknown game"):
        system.game.claim_timeout(999, {"from": challengers[0]})


def test_challenge_rejections(system, posted, nodes, challengers, coordinator, honest_trace, model_id):
    batch_id, batch = posted
    record, proof, data = batch.records[0], batch.proof(0), batch.leaves[0].input
    with brownie.reverts("DisputeGame: leaf not in batch"):
        system.game.challenge(batch_id, 1, record, proof, data, PROGRAM_HEADER, {"from": challengers[0]})
    with brownie.reverts("DisputeGame: leaf not in batch"):
        system.game.challenge(batch_id + 5, 0, record, proof, data, PROGRAM_HEADER, {"from": challengers[0]})
    with brownie.reverts("DisputeGame: node cannot challenge itself"):
        system.game.challenge(batch_id, 0, record, proof, data, PROGRAM_HEADER, {"from": nodes[0]})
    with brownie.reverts("StakeManager: insufficient free bond"):
        system.game.challenge(batch_id, 0, record, proof, data, PROGRAM_HEADER, {"from": coordinator})
    # A leaf whose signature is not the node's cannot be disputed (it is voided instead).
    forged = make_leaf(honest_trace, nodes[1], model_id, system.rollup, job=9)
    forged = forged.__class__(**{**forged.__dict__, "node": nodes[2].address})
    fid, fbatch, _ = post(system, coordinator, [forged])
    with brownie.reverts("DisputeGame: bad node signature"):
        system.game.challenge(*fbatch.challenge_args(fid, 0, PROGRAM_HEADER), {"from": challengers[0]})
    chain.sleep(system.params.challenge_window + 1)
    chain.mine()
    with brownie.reverts("DisputeGame: challenge window closed"):
        system.game.challenge(batch_id, 0, record, proof, data, PROGRAM_HEADER, {"from": challengers[0]})


def test_game_over_rejects_moves(system, posted, nodes, challengers, honest_trace):
    batch_id, batch = posted
    gid = open_game(system, batch_id, batch, 0, challengers[0])
    chain.sleep(system.params.clock_budget + 1)
    chain.mine()
    system.game.claim_timeout(gid, {"from": challengers[0]})
    with brownie.reverts("DisputeGame: game over"):
        system.game.claim_timeout(gid, {"from": challengers[0]})
    with brownie.reverts("DisputeGame: game over"):
        system.game.open_trace(gid, honest_trace.state_root(4), honest_trace.state_proof(4, 4), {"from": nodes[0]})


def test_bad_step_witness_reverts_and_changes_nothing(system, posted, nodes, challengers, program, job_input,
                                                      honest_trace):
    wrong = corrupted_trace(program, job_input, 4, 0, 1)
    gid, driver = game_at_step(system, posted, nodes[0], challengers[0], honest_trace, wrong)
    before = game_state(system.game, gid)
    with brownie.reverts():
        system.game.step(gid, program.header(3), b"\x00" * 64, {"from": challengers[0]})
    with brownie.reverts("StepVerifier: op not in program"):
        system.game.step(gid, program.header(2), b"", {"from": challengers[0]})
    assert game_state(system.game, gid) == before
    assert before["status"] == ACTIVE


def test_phase_two_rejects_malformed_moves(system, posted, nodes, challengers, program, job_input, honest_trace):
    """Drive an honest-node game to each phase-2 move and try the ways to get it wrong."""
    batch_id, batch = posted
    wrong = corrupted_trace(program, job_input, 1, 0, 20)
    gid = open_game(system, batch_id, batch, 0, challengers[0])
    driver = Driver(system, gid, nodes[0], honest_trace, challengers[0], wrong)
    game, node, chal = system.game, {"from": nodes[0]}, {"from": challengers[0]}
    g = driver.play(until_phase=4)
    hi, t = g["hi"], honest_trace
    with brownie.reverts("DisputeGame: bad proof length"):
        game.reveal_tensor(gid, t.trees[hi].root, t.state_proof(hi, hi)[:-1], program.header(hi - 1), node)
    with brownie.reverts("DisputeGame: position not empty in agreed state"):
        game.reveal_tensor(gid, t.trees[hi].root, t.state_proof(hi + 1, hi), program.header(hi - 1), node)
    with brownie.reverts("StepVerifier: op not in program"):
        game.reveal_tensor(gid, t.trees[hi].root, t.state_proof(hi, hi), program.header(hi), node)
    driver.node_move()
    g = driver.state
    assert g["phase"] == 5 and g["depth"] == t.trees[hi].depth
    with brownie.reverts("DisputeGame: wrong number of hashes"):
        game.descend(gid, [b"\x00" * 32] * 3, node)
    with brownie.reverts("DisputeGame: hashes do not match subtree"):
        game.descend(gid, [b"\x00" * 32] * 4, node)
    driver.node_move()
    hashes = [bytes(h) for h in driver.revealed]
    with brownie.reverts("DisputeGame: hashes do not match"):
        game.choose(gid, hashes[::-1], 0, chal)
    with brownie.reverts("DisputeGame: child out of range"):
        game.choose(gid, hashes, 4, chal)
    g = driver.play(until_phase=7)
    chunk = t.trees[hi].chunk(g["index"])
    with brownie.reverts("DisputeGame: values do not match chunk"):
        game.reveal_chunk(gid, [v + 1 for v in chunk], node)
    driver.node_move()
    with brownie.reverts("DisputeGame: values do not match chunk"):
        game.pick_element(gid, [0] * 16, 0, chal)
    with brownie.reverts("DisputeGame: offset out of range"):
        game.pick_element(gid, chunk, 16, chal)
    assert driver.play()["status"] == NODE_WON


def test_padding_element_is_zero_in_a_step(system, staked, coordinator, nodes, challengers, model_id, program,
                                           job_input, honest_trace):
    """A node that puts a non-zero value in a padding column loses: the step knows it is 0."""
    tensors = list(honest_trace.tensors)
    widened = np.zeros((1, 16), dtype=np.int64)
    widened[:, :8] = tensors[4]
    # Same real values, but the committed tensor claims 16 columns with junk in 8..15.
    widened[0, 12] = 5
    tensors[4] = widened
    bad = Trace(program, job_input, tensors)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, nodes[0], model_id, system.rollup)])
    gid = open_game(system, batch_id, batch, 0, challengers[0])
    end = Driver(system, gid, nodes[0], bad, challengers[0], honest_trace).play()
    assert (end["hi"], end["row"], end["col"]) == (4, 0, 12)
    assert end["status"] == CHALLENGER_WON
