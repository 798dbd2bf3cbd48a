"""The services' chain path (web3 + the compiled artifacts) on one anvil for
the suite, built by the one test-network builder (opinfer.chain.testnet):
deploy, post a batch, play a whole game with the pure player; the protocol
client's typed reads and its calldata decoder on real transactions."""

import dataclasses

import pytest

from opinfer.chain.client import (BatchPosted, BatchRecord, GameStarted, ModelInfo, NodeRecord, ProtocolClient,
                                  decode_post_batch)
from opinfer.chain.game import GameClient, play
from opinfer.chain.testnet import ProtocolNet
from opinfer.errors import ChainError
from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.state import Trace
from opinfer.trace.tables import GameState, GameStatus, LeafStatus, Phase
from opinfer.trace.testing import corrupted_trace, toy_job, toy_program


ROLES = ("deployer", "coordinator", "griefer", "node", "challenger", "n2")


@pytest.fixture(scope="module")
def testnet():
    with ProtocolNet.start(ROLES) as net:
        yield net


@pytest.fixture(scope="module")
def chain(testnet):
    return testnet.w3, [testnet.senders[r] for r in ROLES[:5]], testnet.deployment


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


def test_protocol_client_reads_are_typed_and_decode_the_batch_from_calldata(testnet):
    """The one protocol client: registry, stake, batch events, the batch rebuilt from a real
    post_batch transaction's calldata (direct and through a contract wallet), leaf statuses
    and the game as typed records with the shared enums."""
    net, program = testnet, toy_program()
    model_id = net.register(dataclasses.replace(program, name="toy-typed"), price_wei=7)
    net.stake("n2")
    net.announce("n2", "http://127.0.0.1:1", [model_id])
    client = net.client()
    assert isinstance(client, ProtocolClient) and client.chain_id == net.chain_id
    model = client.model(model_id)
    assert model == ModelInfo(model_id, "toy-typed", program.model_root, program.num_ops, 7, True)
    assert client.model_id("toy-typed") == model_id == client.find_model("toy-typed")
    assert client.find_model(str(model_id)) == model_id
    with pytest.raises(ChainError, match="no model named 'nope'"):
        client.find_model("nope")
    assert NodeRecord(net.addr["n2"], "http://127.0.0.1:1", (model_id,), True, 2 * 10**18) in client.nodes()
    assert client.stake(net.addr["n2"]) == 2 * 10**18 and client.listing(net.addr["n2"])[1] == [model_id]

    leaves = []
    for i in range(3):
        x = toy_job(20 + i)
        t = Trace.of(program, x)
        leaf = ResultLeaf((100 + i).to_bytes(16, "big"), model_id, t.input_root, t.output_root, net.addr["n2"],
                          input=x.to_bytes())
        leaves.append(leaf.signed(net.senders["n2"].account.key, net.chain_id, net.rollup))
    head = client.head()
    direct = net.post(leaves[:2])
    wallet = net.post_via(net.forwarder(), leaves[2:])
    events = client.batch_events(head + 1, "latest")
    assert [type(e) for e in events] == [BatchPosted, BatchPosted] and [e.batch_id for e in events] == [direct, wallet]
    for event, posted in zip(events, (leaves[:2], leaves[2:])):
        expected = Batch(posted)
        assert (event.root, event.data_hash, event.leaf_count) == (expected.root, expected.data_hash, len(posted))
        record = client.batch(event.batch_id)
        assert isinstance(record, BatchRecord) and (record.root, record.finalized) == (expected.root, False)
        for batch in (client.load_batch(event.batch_id, event.tx_hash), client.event_batch(event)):
            assert batch.root == expected.root and batch.leaves == expected.leaves
    # the direct posting's own calldata, decoded by the one decoder and encoded again: the same bytes
    raw = bytes(net.w3.eth.get_transaction(events[0].tx_hash)["input"])
    decoded = decode_post_batch(client.rollup, raw)
    assert decoded.leaves == leaves[:2]
    assert bytes.fromhex(client.rollup.encode_abi("post_batch", args=decoded.calldata)[2:]) == raw
    status = client.leaf_status(direct, 1)
    assert status is LeafStatus.POSTED and status.label == "posted"

    net.bond("griefer")
    griefer = net.sender("griefer")
    griefer.call(net.c["DisputeGame"].functions.challenge(
        *Batch(leaves[:2]).challenge_args(direct, 1, program.model_header())))
    (start,) = client.games_started(head + 1, batch_id=direct)
    assert isinstance(start, GameStarted) and (start.leaf_index, start.node) == (1, net.addr["n2"])
    assert client.challenged_input(start) == leaves[1].input
    g = client.game(start.game_id)
    assert isinstance(g, GameState) and g.status is GameStatus.ACTIVE and g.phase is Phase.OPEN
    assert g["phase"] == g.phase and g.node_to_move and (g.batch_id, g.leaf_index) == (direct, 1)
    assert client.leaf_status(direct, 1) is LeafStatus.DISPUTED and client.leaf_status(direct, 0) is LeafStatus.POSTED
