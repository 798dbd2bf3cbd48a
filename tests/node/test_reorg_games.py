"""The challenger and a lying node's defender (the real services, toy model,
real contracts on anvil) while the chain reorganises: the posting of the
lie and the challenge are reorganised away and the batch is mined again
under another id (another coordinator's batch takes its old id), then game
moves are reorganised away, then the end of the game. Each time both
services roll back and re-derive from the canonical chain: the lie is
disputed again at its new place, the honest leaf that took the old id is
left alone, and the liar ends slashed with its leaf invalid."""

import logging

import pytest
from eth_account import Account

from challenger.chain import Chain
from challenger.executors import ProgramExecutor
from challenger.metrics import Metrics as ChallengerMetrics
from challenger.sampler import Sampler
from challenger.service import Challenger
from challenger.store import OPEN as C_OPEN
from challenger.store import WON
from challenger.store import Store as ChallengerStore
from node import dishonest
from node.store import LOST
from opinfer.chain import reorg
from opinfer.chain.sender import TxSender
from opinfer.trace import player
from opinfer.trace.leaf import Batch
from tests.node.kit import INVALID, POSTED, STAKE, Net


@pytest.fixture(scope="module")
def net():
    n = Net.start()
    n.stake("n1")
    n.stake("n4")
    n.senders["deployer"].call(n.c["ResultRollup"].functions.set_coordinator(n.addr["n8"], True))
    for _ in range(6):   # the set-up out of reach of the reorganisations below
        n.w3.provider.make_request("evm_mine", [])
    yield n
    n.stop()


def make_challenger(net, tmp_path):
    chain = Chain(net.w3, TxSender(net.w3, net.keys["challenger"]), net.rollup)
    return Challenger(chain, ChallengerStore(tmp_path / "challenger.db"), {"toy-dot": ProgramExecutor(net.program)},
                      Sampler(b"k" * 32, 1.0), ChallengerMetrics(), logging.getLogger("test.reorg.challenger"),
                      bond_top_up=10**18, start_block=net.w3.eth.block_number + 1)


def signed_post(net, role: str, leaves) -> bytes:
    """A post_batch transaction signed by `role`, not sent (a reorganisation mines it)."""
    fn = net.c["ResultRollup"].functions.post_batch(*Batch(leaves).calldata)
    sender = Account.from_key(net.keys[role])
    tx = fn.build_transaction({"from": sender.address, "gas": 12_000_000, "gasPrice": net.w3.eth.gas_price,
                               "nonce": net.w3.eth.get_transaction_count(sender.address),
                               "chainId": net.w3.eth.chain_id})
    return bytes(sender.sign_transaction(tx).raw_transaction)


def moves_of(net, gid) -> int:
    game = net.c["DisputeGame"]
    return sum(len(getattr(game.events, name)().get_logs(from_block=0, argument_filters={"game_id": gid}))
               for name in ("TraceOpened", "Bisected", "Picked", "TensorRevealed", "Descended", "Chosen", "ChunkRevealed",
                            "ElementPicked"))


def test_a_lie_survives_reorganisations_of_its_posting_challenge_moves_and_end(net, tmp_path):
    strategy = dishonest.BEHAVIOURS["deep-element"]()
    liar = net.node("n4", dishonest.dishonest_node(strategy))
    defender = net.defender("n4", tmp_path, strategy=strategy, node=liar)
    honest = net.node("n1")
    c = make_challenger(net, tmp_path)
    rollup, game = net.c["ResultRollup"].functions, net.c["DisputeGame"].functions
    leaves = [net.execute(honest, 70), net.execute(liar, 71)]
    old_id = net.post(leaves)
    (posted,) = net.c["ResultRollup"].events.BatchPosted().get_logs(from_block=0,
                                                                    argument_filters={"batch_id": old_id})
    c.tick()
    defender.tick()
    (d,) = c.store.disputes()
    assert (d.batch_id, d.leaf_index, d.status) == (old_id, 1, C_OPEN)

    # 1. The posting and the challenge (and the bond, and any move) reorganised away; another
    #    coordinator's batch takes the old id and ours is mined again after it.
    depth = net.w3.eth.block_number - posted["blockNumber"] + 1
    assert 1 <= depth <= 5
    other = signed_post(net, "n8", [net.execute(honest, 72)])
    reorg.anvil_reorg(net.w3, depth, [(other, 0), (reorg.raw_transaction(net.w3, posted["transactionHash"]), 0)])
    new_id = old_id + 1
    assert bytes(rollup.batch(new_id).call()[0]) == Batch(leaves).root and game.game_count().call() == 0
    c.tick()
    defender.tick()
    (d,) = c.store.disputes()
    assert (d.batch_id, d.leaf_index, d.status) == (new_id, 1, C_OPEN) and c.reorgs == 1
    assert c.store.checked(old_id) == {0: "ok"}          # the honest leaf now under the old id: checked, left alone
    assert not game.has_challenged(old_id, 1, net.addr["challenger"]).call()
    assert player.game_state(game.games(d.game_id).call())["batch_id"] == new_id
    assert [(g.game_id, g.batch_id) for g in defender.store.games()] == [(d.game_id, new_id)]

    # 2. Game moves reorganised away: both re-read the game and move again.
    for _ in range(4):
        c.tick()
        defender.tick()
    made = moves_of(net, d.game_id)
    assert made >= 2
    reorg.anvil_reorg(net.w3, 3)
    assert moves_of(net, d.game_id) < made
    for _ in range(80):
        c.tick()
        defender.tick()
        if not c.store.disputes(C_OPEN):
            break
    g = player.game_state(game.games(d.game_id).call())
    assert g["status"] == player.CHALLENGER_WON and net.slashable("n4") == 0

    # 3. The end of the game reorganised away (the one-step, the slash, the reward claim).
    reorg.anvil_reorg(net.w3, 5)
    assert player.game_state(game.games(d.game_id).call())["status"] == player.ACTIVE
    assert net.slashable("n4") == STAKE
    for _ in range(80):
        c.tick()
        defender.tick()
        if not c.store.disputes(C_OPEN):
            break
    defender.tick()
    (d,) = c.store.disputes()
    assert d.status == WON and c.reorgs == 3 and defender.reorgs == 3
    assert player.game_state(game.games(d.game_id).call())["status"] == player.CHALLENGER_WON
    assert net.slashable("n4") == 0 and net.slashable("n1") == STAKE
    assert net.leaf_status(new_id, 1) == INVALID and net.leaf_status(new_id, 0) == POSTED
    assert net.leaf_status(old_id, 0) == POSTED
    (lost,) = defender.store.games()
    assert (lost.game_id, lost.batch_id, lost.outcome) == (d.game_id, new_id, LOST)


def test_a_challenge_dropped_alone_is_made_again(net, tmp_path):
    """Only the challenge's block is replaced: every block the challenger scanned stays, so
    its block tracker sees nothing; its game id names no game of its own any more (checked on
    each move), and it challenges again. Found by the fault suite: a lie went final."""
    net.stake("n5")
    strategy = dishonest.BEHAVIOURS["wrong-output"]()
    liar = net.node("n5", dishonest.dishonest_node(strategy))
    defender = net.defender("n5", tmp_path, strategy=strategy, node=liar)
    c = make_challenger(net, tmp_path)
    batch_id = net.post([net.execute(net.node("n1"), 80), net.execute(liar, 81)])
    c.tick()
    (d,) = c.store.disputes()
    assert d.status == C_OPEN and net.w3.eth.block_number == d.start_block   # the challenge: the newest block
    reorg.anvil_reorg(net.w3, 1)
    game = net.c["DisputeGame"].functions
    assert not game.has_challenged(batch_id, 1, net.addr["challenger"]).call()
    for _ in range(80):
        c.tick()
        defender.tick()
        if c.store.disputes(WON):
            break
    (d,) = c.store.disputes()
    assert d.status == WON and c.reorgs == 0      # no reorganisation of the scanned blocks was seen
    assert game.has_challenged(batch_id, 1, net.addr["challenger"]).call()
    assert net.leaf_status(batch_id, 1) == INVALID and net.slashable("n5") == 0
