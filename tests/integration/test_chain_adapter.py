"""The services' chain path (web3 + brownie's artifacts) on one anvil for
the suite: deploy, post a batch, play a whole game with the pure player."""

import pytest
from web3 import HTTPProvider, Web3

from opinfer.chain.anvil import Anvil, dev_keys
from opinfer.chain.deploy import ProtocolParams, deploy
from opinfer.chain.game import GameClient, play
from opinfer.chain.sender import TxSender
from opinfer.errors import ChainError
from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, toy_job, toy_program


@pytest.fixture(scope="module")
def chain():
    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        keys = dev_keys(5)
        senders = [TxSender(w3, k) for k in keys]
        d = deploy(w3, senders[0], ProtocolParams(), coordinators=(senders[1].address,))
        yield w3, senders, d


def test_deploy_wires_the_contracts(chain):
    w3, senders, d = chain
    c = d.contracts
    assert c["StakeManager"].functions.dispute_game().call() == d.addresses["DisputeGame"]
    assert c["ResultRollup"].functions.dispute_game().call() == d.addresses["DisputeGame"]
    assert c["ResultRollup"].functions.is_coordinator(senders[1].address).call()


def test_sender_surfaces_revert_reasons(chain):
    w3, senders, d = chain
    with pytest.raises(ChainError, match="StakeManager: below minimum stake"):
        senders[2].call(d.contracts["StakeManager"].functions.stake_eth(), value=1)


def test_cheating_node_loses_a_game_played_over_web3(chain):
    w3, senders, d = chain
    c = d.contracts
    owner, coordinator, node, challenger = senders[0], senders[1], senders[3], senders[4]
    program = toy_program()
    owner.call(c["ModelRegistry"].functions.register_model("toy-web3", program.model_root, program.num_ops, 0))
    model_id = c["ModelRegistry"].functions.model_id_by_name("toy-web3").call()
    node.call(c["StakeManager"].functions.stake_eth(), value=2 * 10**18)
    challenger.call(c["StakeManager"].functions.deposit_bond(), value=10**18)
    x = toy_job(3)
    honest = Trace.of(program, x)
    bad = corrupted_trace(program, x, 3, 0, 9, delta=100)
    assert bad.output_root != honest.output_root
    leaf = ResultLeaf(b"\x07" * 16, model_id, bad.input_root, bad.output_root, node.address, input=x.to_bytes())
    leaf = leaf.signed(node.account.key, w3.eth.chain_id, d.addresses["ResultRollup"])
    batch = Batch([leaf])
    coordinator.call(c["ResultRollup"].functions.post_batch(*batch.calldata))
    batch_id = c["ResultRollup"].functions.batch_count().call()
    challenger.call(c["DisputeGame"].functions.challenge(*batch.challenge_args(batch_id, 0, program.model_header())))
    gid = c["DisputeGame"].functions.game_count().call()
    g, moves = play(GameClient(c["DisputeGame"], node), GameClient(c["DisputeGame"], challenger), gid, bad, honest)
    assert [name for name, _ in moves][:2] == ["open_trace", "bisect"] and moves[-1][0] == "step"
    assert g["status"] == player.CHALLENGER_WON
    assert (g["hi"], g["row"], g["col"]) == (3, 0, 9)
    assert c["StakeManager"].functions.slashable(node.address).call() == 0
    assert c["ResultRollup"].functions.leaf_status(batch_id, 0).call() == 4
