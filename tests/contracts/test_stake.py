"""StakeManager: every external function and revert path."""

import brownie
import pytest
from brownie import StakeManager, accounts, chain

ETHER = 10**18


def owed(stake, people) -> int:
    return sum(stake.stake(a) + stake.unbonding(a) + stake.bond(a) + stake.locked_bond(a) + stake.claimable(a)
               for a in people)


@pytest.fixture
def sm(system):
    return system.stake


def test_constructor_rejects_bad_parameters(deployer, treasury):
    with brownie.reverts("StakeManager: min stake is zero"):
        StakeManager.deploy(0, 100, 5000, treasury, {"from": deployer})
    with brownie.reverts("StakeManager: reward above 100%"):
        StakeManager.deploy(1, 100, 10_001, treasury, {"from": deployer})
    with brownie.reverts("StakeManager: treasury is zero"):
        StakeManager.deploy(1, 100, 5000, "0x" + "00" * 20, {"from": deployer})


def test_dispute_game_is_set_once_by_owner(sm, deployer):
    with brownie.reverts("StakeManager: caller is not the owner"):
        sm.set_dispute_game(accounts[5], {"from": accounts[5]})
    with brownie.reverts("StakeManager: dispute game already set"):
        sm.set_dispute_game(accounts[5], {"from": deployer})


def test_stake_unbond_withdraw_cycle(sm, params):
    node = accounts[6]
    with brownie.reverts("StakeManager: zero stake"):
        sm.stake_eth({"from": node, "value": 0})
    with brownie.reverts("StakeManager: below minimum stake"):
        sm.stake_eth({"from": node, "value": params.min_stake - 1})
    tx = sm.stake_eth({"from": node, "value": 3 * ETHER})
    assert tx.events["Staked"]["total"] == 3 * ETHER
    assert sm.is_active(node)
    with brownie.reverts("StakeManager: zero amount"):
        sm.request_unbond(0, {"from": node})
    with brownie.reverts("StakeManager: amount above stake"):
        sm.request_unbond(4 * ETHER, {"from": node})
    with brownie.reverts("StakeManager: remainder below minimum"):
        sm.request_unbond(3 * ETHER - 1, {"from": node})
    with brownie.reverts("StakeManager: nothing unbonding"):
        sm.withdraw_stake({"from": node})
    tx = sm.request_unbond(3 * ETHER, {"from": node})
    assert tx.events["UnbondRequested"]["unlock_at"] == tx.timestamp + params.delay()
    assert not sm.is_active(node)
    assert sm.slashable(node) == 3 * ETHER  # still slashable while unbonding
    with brownie.reverts("StakeManager: still unbonding"):
        sm.withdraw_stake({"from": node})
    chain.sleep(params.delay() + 1)
    chain.mine()
    before = node.balance()
    tx = sm.withdraw_stake({"from": node})
    assert node.balance() == before + 3 * ETHER
    assert tx.events["StakeWithdrawn"]["amount"] == 3 * ETHER
    assert sm.slashable(node) == 0 and sm.balance() == 0


def test_bonds_deposit_and_withdraw(sm):
    c = accounts[7]
    with brownie.reverts("StakeManager: zero bond"):
        sm.deposit_bond({"from": c, "value": 0})
    sm.deposit_bond({"from": c, "value": ETHER})
    with brownie.reverts("StakeManager: zero amount"):
        sm.withdraw_bond(0, {"from": c})
    with brownie.reverts("StakeManager: amount above free bond"):
        sm.withdraw_bond(ETHER + 1, {"from": c})
    before = c.balance()
    sm.withdraw_bond(ETHER // 4, {"from": c})
    assert c.balance() == before + ETHER // 4
    assert sm.bond(c) == 3 * ETHER // 4


def test_nothing_to_claim(sm):
    with brownie.reverts("StakeManager: nothing to claim"):
        sm.claim({"from": accounts[8]})


@pytest.mark.parametrize("fn,args", [
    ("open_dispute", 3), ("award_bond", 3), ("release_bond", 3), ("slash", 3),
])
def test_game_only_functions_reject_everyone_else(sm, fn, args, deployer):
    with brownie.reverts("StakeManager: caller is not the dispute game"):
        getattr(sm, fn)(accounts[6], accounts[7], 1, {"from": deployer})


def test_open_dispute_locks_unbond_and_withdraw(system, staked, nodes, challengers, coordinator, model_id,
                                                honest_trace, params):
    from conftest import PROGRAM_HEADER, make_leaf, post
    sm = system.stake
    node = nodes[0]
    sm.request_unbond(params.min_stake, {"from": node})  # half out, half still active
    batch_id, batch, _ = post(system, coordinator, [make_leaf(honest_trace, node, model_id, system.rollup)])
    system.game.challenge(*batch.challenge_args(batch_id, 0, PROGRAM_HEADER), {"from": challengers[0]})
    assert sm.open_disputes(node) == 1
    assert sm.locked_bond(challengers[0]) == params.challenge_bond
    # Unbonding may start during a dispute (issue 14, point 7); withdrawal waits for it.
    sm.request_unbond(params.min_stake, {"from": node})
    assert sm.unbonding(node) == 2 * params.min_stake and sm.slashable(node) == 2 * params.min_stake
    chain.sleep(params.delay() + 1)
    chain.mine()
    with brownie.reverts("StakeManager: dispute open"):
        sm.withdraw_stake({"from": node})


def test_reposted_leaves_and_a_griefer_cannot_keep_a_node_from_leaving(system, staked, nodes, challengers,
                                                                       coordinator, model_id, program, job_input,
                                                                       honest_trace, params):
    """Attack (issue 14, point 7): a coordinator re-posts an honest node's
    old signed leaf and a griefer challenges every copy, so a dispute is
    always open; request_unbond used to refuse while one was, so the node
    could never leave. Now it starts unbonding at once. Its leaves stay
    postable (it is still slashable: point 10) only while their challenge
    window closes before the unlock, so the last game starts before the
    unlock and the node withdraws within one game length of it."""
    from conftest import NODE_WON, PROGRAM_HEADER, Driver, corrupted_trace, make_leaf, post
    sm, rollup, node, griefer = system.stake, system.rollup, nodes[0], challengers[1]
    leaf = make_leaf(honest_trace, node, model_id, rollup, job=9)
    wrong = corrupted_trace(program, job_input, 2, 0, 7)

    def challenge(batch_id, batch):
        return system.game.challenge(*batch.challenge_args(batch_id, 0, PROGRAM_HEADER),
                                     {"from": griefer}).return_value

    def repost_and_challenge():
        return challenge(*post(system, coordinator, [leaf])[:2])

    gids = [repost_and_challenge(), repost_and_challenge()]  # the same signed leaf, twice
    assert sm.open_disputes(node) == 2
    tx = sm.request_unbond(2 * params.min_stake, {"from": node})  # reverted "dispute open" before
    unlock = tx.events["UnbondRequested"]["unlock_at"]
    assert not sm.is_active(node) and sm.slashable(node) == 2 * params.min_stake
    for gid in gids:
        assert Driver(system, gid, node, honest_trace, griefer, wrong).play()["status"] == NODE_WON
    # The last copy the coordinator can post: its window still closes before the unlock...
    chain.sleep(unlock - params.challenge_window - chain.time() - 30)
    last_id, last_batch, _ = post(system, coordinator, [leaf])
    chain.sleep(unlock - params.challenge_window - chain.time() + 1)
    with brownie.reverts("ResultRollup: node stake unlocks within the window"):
        post(system, coordinator, [leaf])
    # ...and the griefer challenges it at the last second of that window.
    chain.sleep(rollup.batch_deadline(last_id) - chain.time() - 2)
    last = challenge(last_id, last_batch)
    chain.sleep(unlock - chain.time() + 1)
    chain.mine()
    with brownie.reverts("StakeManager: dispute open"):
        sm.withdraw_stake({"from": node})  # the game opened before the unlock holds it...
    assert Driver(system, last, node, honest_trace, griefer, wrong).play()["status"] == NODE_WON
    before = node.balance()
    sm.withdraw_stake({"from": node, "gas_price": 0})  # ...for one game at most
    assert node.balance() == before + 2 * params.min_stake
    assert sm.claimable(node) == 3 * params.challenge_bond  # the griefer paid for every game
    with brownie.reverts("ResultRollup: node not staked"):
        post(system, coordinator, [leaf])


def test_balance_always_equals_what_is_owed(system, staked, nodes, challengers, treasury):
    people = list(nodes) + list(challengers) + [treasury]
    assert system.stake.balance() == owed(system.stake, people)
