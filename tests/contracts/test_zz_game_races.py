"""Attacks on the dispute game's economics and clocks (issue 14, points 3, 4
and 8), each carried out on anvil through the real contracts.

- Reward theft (point 4): a cheater that sees an honest challenge opens its
  own from a second address, loses it at once and would take the reward; the
  reward is escrowed for the earliest-opened game that ends in fraud.
- Clock griefing (point 3): several challenges of one honest node in one
  block; the node builds one trace at a time and must still win every game.
- Low findings (point 8): a second slash on a leaf already proven invalid, a
  chain-id change voiding a disputed leaf, the node list filled by nodes that
  left.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from brownie import accounts, chain, web3
from eth_account import Account

from conftest import (CHALLENGER_WON, NODE_WON, PROGRAM_HEADER, VOID, Driver, corrupted_trace, game_state, make_leaf,
                      post)
from opinfer.trace.leaf import ResultLeaf

ETHER = 10**18
BPS = 10_000
STATUS_DISPUTED, STATUS_FINAL, STATUS_INVALID = 2, 3, 4
# The measured time to build the trace of the longest allowed job on 2 cores
# (docs/protocol.md, "Clocks"): the defender builds traces one at a time.
TRACE_S = 205


def rpc(method: str, params: list):
    req = urllib.request.Request(web3.provider.endpoint_uri, json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        reply = json.loads(resp.read())
    assert "error" not in reply, reply
    return reply["result"]


def open_game(system, batch_id, batch, index, challenger) -> int:
    return system.game.challenge(*batch.challenge_args(batch_id, index, PROGRAM_HEADER),
                                 {"from": challenger}).return_value


def reward_of(system, amount: int) -> int:
    return amount * system.params.challenger_reward_bps // BPS


def unbound_leaf(trace, node, model_id, rollup, job: int) -> ResultLeaf:
    """A leaf whose input root is not its input's: any challenge ends at once."""
    leaf = ResultLeaf(job_id=job.to_bytes(16, "big"), model_id=model_id, input_root=b"\x01" * 32,
                      output_root=trace.output_root, node=node.address, input=trace.job.to_bytes())
    return leaf.signed(node.private_key, chain.id, rollup.address)


# ---------------------------------------------------------------- point 4: reward theft


@pytest.mark.parametrize("how", ["other_leaf_at_once", "same_leaf_played_fast", "honest_leaf_timeout"])
def test_self_challenge_cannot_take_the_honest_reward(system, staked, coordinator, nodes, challengers, model_id,
                                                      program, job_input, honest_trace, treasury, how):
    """The race: an honest challenger disputes a lie; the cheater opens its own
    game from a second address (on another leaf that loses at once, on the
    same leaf played out fast, or on one of its honest leaves that it lets
    time out) while stalling the honest game. The honest challenger, who
    disputed first, gets the reward; the sock puppet gets nothing."""
    cheater, honest, sock = nodes[0], challengers[0], challengers[2]
    bad = corrupted_trace(program, job_input, 3, 0, 4, delta=77)
    leaves = [make_leaf(bad, cheater, model_id, system.rollup, job=1),
              unbound_leaf(honest_trace, cheater, model_id, system.rollup, job=2),
              make_leaf(honest_trace, cheater, model_id, system.rollup, job=3)]
    batch_id, batch, _ = post(system, coordinator, leaves)
    stake = system.stake.slashable(cheater)
    h = open_game(system, batch_id, batch, 0, honest)
    if how == "other_leaf_at_once":
        s = open_game(system, batch_id, batch, 1, sock)
        assert game_state(system.game, s)["status"] == CHALLENGER_WON  # lost in the challenge itself
    elif how == "same_leaf_played_fast":
        s = open_game(system, batch_id, batch, 0, sock)
        assert Driver(system, s, cheater, bad, sock, honest_trace).play()["status"] == CHALLENGER_WON
    else:
        s = open_game(system, batch_id, batch, 2, sock)
        # The cheater lets both games run out; the sock's game has the longer node clock.
        chain.sleep(game_state(system.game, s)["node_clock"] + 1)
        chain.mine()
        system.game.claim_timeout(s, {"from": sock})
        assert game_state(system.game, s)["status"] == CHALLENGER_WON
    # The whole stake is gone at the first loss; the reward waits for the earlier game.
    assert system.stake.slashable(cheater) == 0
    assert system.stake.claimable(sock) == 0
    assert system.stake.reward_escrow(cheater) == reward_of(system, stake)
    assert system.game.reward_game(cheater) == s
    # The honest game ends: voided when the sock's game proved its leaf, timed
    # out by the stalling cheater, or played out.
    if system.game.fraud_proven(batch_id, 0):
        system.game.void_after_fraud(h, {"from": honest})
        assert game_state(system.game, h)["status"] == VOID
    elif how == "honest_leaf_timeout":
        system.game.claim_timeout(h, {"from": honest})
        assert game_state(system.game, h)["status"] == CHALLENGER_WON
    else:
        assert Driver(system, h, cheater, bad, honest, honest_trace).play()["status"] == CHALLENGER_WON
    assert system.stake.claimable(honest) == reward_of(system, stake)
    assert system.stake.claimable(sock) == 0
    assert system.stake.reward_escrow(cheater) == 0
    assert system.stake.claimable(treasury) == stake - reward_of(system, stake)
    assert system.stake.bond(honest) == system.stake.bond(sock) == ETHER  # both bonds back
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_INVALID


def test_reward_waits_for_an_earlier_game_the_node_wins(system, staked, coordinator, nodes, challengers, model_id,
                                                        program, job_input, honest_trace):
    """An earlier game that ends with the node winning (a griefer's) releases
    the escrowed reward to the later game that proved the fraud."""
    node, griefer, honest = nodes[1], challengers[1], challengers[0]
    bad = corrupted_trace(program, job_input, 4, 0, 2, delta=9)
    leaves = [make_leaf(honest_trace, node, model_id, system.rollup, job=11),
              make_leaf(bad, node, model_id, system.rollup, job=12)]
    batch_id, batch, _ = post(system, coordinator, leaves)
    stake = system.stake.slashable(node)
    g = open_game(system, batch_id, batch, 0, griefer)
    h = open_game(system, batch_id, batch, 1, honest)
    assert Driver(system, h, node, bad, honest, honest_trace).play()["status"] == CHALLENGER_WON
    assert system.stake.claimable(honest) == 0 and system.stake.reward_escrow(node) == reward_of(system, stake)
    wrong = corrupted_trace(program, job_input, 2, 0, 7)
    assert Driver(system, g, node, honest_trace, griefer, wrong).play()["status"] == NODE_WON
    assert system.stake.claimable(honest) == reward_of(system, stake)
    assert system.stake.reward_escrow(node) == 0 and system.game.reward_game(node) == 0


# ---------------------------------------------------------------- point 3: clock griefing


def test_concurrent_challenges_in_one_block_each_clock_covers_the_queue(system, staked, coordinator, nodes,
                                                                        challengers, model_id, program, job_input,
                                                                        honest_trace):
    """Four griefers challenge four long jobs of one honest node in one block.
    The node builds the traces one at a time (TRACE_S each) and plays each
    game as its trace is ready: game k waits (k + 1) x TRACE_S for its
    trace, inside its node clock (clock_budget + k x trace_budget), and the
    node wins all four. With one clock_budget for every game (before), the
    second game was lost on time."""
    node, params = nodes[2], system.params
    assert params.trace_budget >= TRACE_S and params.clock_budget >= TRACE_S
    griefers = [challengers[1], challengers[2]] + list(accounts[5:7])
    for g in griefers[2:]:
        system.stake.deposit_bond({"from": g, "value": ETHER})
    leaves = [make_leaf(honest_trace, node, model_id, system.rollup, job=20 + i) for i in range(4)]
    batch_id, batch, _ = post(system, coordinator, leaves)
    # Raw JSON-RPC while automine is off: brownie's web3 middleware waits for new blocks.
    rpc("evm_setAutomine", [False])
    try:
        hashes = [rpc("eth_sendTransaction", [{
            "from": g.address, "to": system.game.address, "gas": hex(3_000_000), "gasPrice": "0x0",
            "data": system.game.challenge.encode_input(*batch.challenge_args(batch_id, i, PROGRAM_HEADER))}])
            for i, g in enumerate(griefers)]
        rpc("evm_mine", [])
    finally:
        rpc("evm_setAutomine", [True])
    receipts = [rpc("eth_getTransactionReceipt", [h]) for h in hashes]
    assert all(int(r["status"], 16) == 1 for r in receipts)
    assert len({r["blockNumber"] for r in receipts}) == 1  # one block
    chain.mine()
    gids = list(range(system.game.game_count() - 3, system.game.game_count() + 1))
    assert {game_state(system.game, gid)["leaf_index"] for gid in gids} == {0, 1, 2, 3}
    for k, gid in enumerate(gids):
        assert game_state(system.game, gid)["node_clock"] == params.clock_budget + k * params.trace_budget
    assert system.game.node_clock_for(node) == params.clock_budget + 4 * params.trace_budget
    wrong = corrupted_trace(program, job_input, 2, 0, 7)
    drivers = [Driver(system, gid, node, honest_trace, g, wrong) for gid, g in zip(gids, griefers)]
    for d in drivers:  # one trace at a time; with it, the node plays that game out (the griefers answer)
        chain.sleep(TRACE_S)
        assert d.play()["status"] == NODE_WON
    assert system.stake.claimable(node) == 4 * params.challenge_bond
    assert system.stake.slashable(node) == 2 * params.min_stake
    assert system.game.open_against(node) == 0 and system.game.first_open(node) == 0


# ---------------------------------------------------------------- point 8: low findings


def test_second_game_on_a_proven_leaf_does_not_slash_new_stake(system, staked, coordinator, nodes, challengers,
                                                              model_id, program, job_input, honest_trace):
    """Two games dispute one lie; the first slashes. The node stakes again; the
    second game, played to the end, must not take the new stake (8a)."""
    node = nodes[0]
    bad = corrupted_trace(program, job_input, 1, 0, 5, delta=40)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, node, model_id, system.rollup, job=30)])
    g1 = open_game(system, batch_id, batch, 0, challengers[0])
    g2 = open_game(system, batch_id, batch, 0, challengers[1])
    assert Driver(system, g1, node, bad, challengers[0], honest_trace).play()["status"] == CHALLENGER_WON
    system.stake.stake_eth({"from": node, "value": system.params.min_stake})
    assert Driver(system, g2, node, bad, challengers[1], honest_trace).play()["status"] == CHALLENGER_WON
    assert system.stake.slashable(node) == system.params.min_stake
    assert system.stake.bond(challengers[1]) == ETHER and system.stake.claimable(challengers[1]) == 0
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_INVALID and system.rollup.open_games(batch_id, 0) == 0


def set_chain_id(chain_id: int) -> None:
    """anvil may apply the change with a delay: set it until it reads back."""
    for _ in range(50):
        rpc("anvil_setChainId", [chain_id])
        if int(rpc("eth_chainId", []), 16) == chain_id:
            return
        time.sleep(0.1)
    raise AssertionError(f"anvil's chain id never read back as {chain_id}")


# Last test of the last module (brownie runs files in name order, hence "zz"): it changes the
# shared anvil's chain id, and brownie's account layer can keep signing for the changed id
# afterwards even though it is set back below; nothing may run after it.
def test_chain_id_change_does_not_free_a_disputed_cheater(system, staked, coordinator, nodes, challengers, model_id,
                                                          program, job_input, honest_trace):
    """After a chain-id change every leaf's signature stops recovering, so
    void_forged_leaf marks a disputed lie invalid; that must not let anyone
    void the game (the cheater would keep its stake): the game goes on and
    slashes (8b)."""
    node, challenger = nodes[1], challengers[0]
    bad = corrupted_trace(program, job_input, 3, 0, 1, delta=21)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, node, model_id, system.rollup, job=31)])
    gid = open_game(system, batch_id, batch, 0, challenger)
    stake = system.stake.slashable(node)
    old = web3.eth.chain_id
    anyone = nodes[2]
    try:
        set_chain_id(old + 1)

        # Raw transactions signed for the new chain id (brownie keeps the old one); each waited
        # for and required to succeed (a loaded anvil mines it after the call returns).
        def send(contract, fn, *args):
            tx_hash = rpc("eth_sendRawTransaction", ["0x" + Account.sign_transaction({
                "to": contract.address, "data": getattr(contract, fn).encode_input(*args), "gas": 3_000_000,
                "gasPrice": 0, "chainId": old + 1, "value": 0,
                "nonce": int(rpc("eth_getTransactionCount", [anyone.address, "latest"]), 16),
            }, anyone.private_key).raw_transaction.hex().removeprefix("0x")])
            for _ in range(100):
                receipt = rpc("eth_getTransactionReceipt", [tx_hash])
                if receipt:
                    assert int(receipt["status"], 16) == 1, (fn, receipt)
                    return tx_hash
                time.sleep(0.1)
            raise AssertionError(f"{fn} was not mined")

        send(system.rollup, "void_forged_leaf", batch_id, 0, batch.records[0], batch.proof(0))
        assert system.rollup.invalid(batch_id, 0)
        with pytest.raises(AssertionError, match="DisputeGame: leaf not invalid"):
            rpc("eth_call", [{"from": anyone.address, "to": system.game.address,
                              "data": system.game.void_after_fraud.encode_input(gid)}, "latest"])
        chain.sleep(system.params.clock_budget + 1)
        send(system.game, "claim_timeout", gid)
    finally:
        set_chain_id(old)
        # brownie caches the chain id on first use; a read inside the window would leave every
        # later test signing for the other chain.
        web3._chain_id = old
    chain.mine()
    assert game_state(system.game, gid)["status"] == CHALLENGER_WON
    assert system.stake.slashable(node) == 0 and system.stake.claimable(challenger) == reward_of(system, stake)
    assert system.rollup.open_games(batch_id, 0) == 0 and system.rollup.leaf_status(batch_id, 0) == STATUS_INVALID
