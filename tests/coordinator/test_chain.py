"""Batches on a real chain: posting, inclusion proofs checked by the
contract, finality only after the window, and a consensus job whose
disagreeing node is disputed and proven wrong on-chain."""

import httpx
import pytest

from coordinator.local import ServerThread
from node.app import Node, create_app
from opinfer.chain.anvil import dev_keys
from opinfer.chain.game import GameClient, play
from opinfer.chain.sender import TxSender
from opinfer.models.minilm.program import default_program
from opinfer.semantics.jobinput import JobInput
from opinfer.trace import player
from opinfer.trace.leaf import Batch
from opinfer.trace.outputs import embedding_output, tensor_root
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace

MINILM = "all-minilm-l6-v2"
COL, DELTA = 7, 50


def embed(coord, text, **opinfer):
    r = httpx.post(f"{coord.url}/v1/embeddings", json={"model": MINILM, "input": text,
                                                       "opinfer": {"cache": False, **opinfer}}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def job(coord, job_id):
    return httpx.get(f"{coord.url}/v1/jobs/{job_id}").json()


def posted_batch(net, tx_hash) -> Batch:
    """The batch rebuilt from its transaction's calldata alone (data availability)."""
    rollup = net.deployment.contracts["ResultRollup"]
    tx = net.w3.eth.get_transaction(tx_hash)
    _, args = rollup.decode_function_input(tx["input"])
    plain = [lambda rows: [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]][0]
    return Batch.from_calldata(plain(args["_leaves"]), plain(args["_runs"]), args["_inputs"])


def test_posted_jobs_carry_proofs_the_rollup_accepts(coord, net):
    ids = [embed(coord, f"Batch me, number {i}.")["opinfer"]["job_id"] for i in range(3)]
    assert all(job(coord, i)["status"] == "pending" for i in ids)
    posted = coord.c.post_batches()
    assert len(posted) == 1
    rollup = net.deployment.contracts["ResultRollup"]
    batch = posted_batch(net, job(coord, ids[0])["tx_hash"])
    assert sorted("0x" + leaf.job_id.hex() for leaf in batch.leaves) == sorted(ids)
    for job_id in ids:
        j = job(coord, job_id)
        assert j["status"] == "posted" and j["batch_id"] == posted[0]
        proof = [bytes.fromhex(p[2:]) for p in j["proof"]]
        assert rollup.functions.verify_inclusion(j["batch_id"], j["leaf_index"], j["leaf_hash"], proof).call()
        assert batch.leaves[j["leaf_index"]].hash.hex() == j["leaf_hash"][2:]
    b = httpx.get(f"{coord.url}/v1/batches/{posted[0]}").json()
    assert b["leaf_count"] == 3 and b["state"] == "posted" and b["root"] == "0x" + batch.root.hex()
    assert coord.c.post_batches() == []  # nothing twice


def test_final_only_after_the_window_and_when_the_chain_says_so(coord, net):
    job_id = embed(coord, "Finality takes a window.")["opinfer"]["job_id"]
    (batch_id,) = coord.c.post_batches()
    assert coord.c.finalize() == []
    assert job(coord, job_id)["status"] == "posted"
    net.time_travel(61)
    assert batch_id in coord.c.finalize()
    assert job(coord, job_id)["status"] == "final"
    rollup = net.deployment.contracts["ResultRollup"]
    assert rollup.functions.leaf_status(batch_id, job(coord, job_id)["leaf_index"]).call() == 3
    # both batches of this module (3 + 1 leaves) are past their deadline now
    assert "opinfer_finalization_lag_seconds_count 4.0" in httpx.get(f"{coord.url}/metrics").text


class LyingNode(Node):
    """Answers with one embedding element off by DELTA, and commits to that answer consistently."""

    def execute(self, req):
        out = super().execute(req)
        vector = list(out["output"]["embedding"])
        vector[COL] += DELTA
        from opinfer.trace.leaf import ResultLeaf

        data = bytes.fromhex(req.input[2:])
        leaf = ResultLeaf(bytes.fromhex(req.job_id[2:]), req.model_id, bytes.fromhex(out["input_root"][2:]),
                          tensor_root(embedding_output(vector)), self.address, data)
        leaf = leaf.signed(self.key, self.chain_id, self.rollup)
        out.update(output={"embedding": vector}, output_root="0x" + leaf.output_root.hex(),
                   signature="0x" + leaf.signature.hex())
        return out


@pytest.fixture()
def liar(net):
    key = dev_keys(10)[9]  # a funded dev account no other role uses
    node = LyingNode(key, net.deployment.chain_id, net.addresses["ResultRollup"], net.models)
    server = ServerThread(create_app(node=node)).start()
    sender = TxSender(net.w3, key)
    c = net.deployment.contracts
    sender.call(c["StakeManager"].functions.stake_eth(), value=2 * 10**18)
    sender.call(c["ModelRegistry"].functions.announce(server.url, [net.models[MINILM]]))
    yield node
    TxSender(net.w3, key).call(c["ModelRegistry"].functions.retire())  # fresh nonce: the game used this key
    server.stop()


def test_consensus_outvotes_a_liar_whose_leaf_is_then_disputed_and_invalid(coord, net, liar):
    coord.c.refresh_nodes()
    text = "Consensus posts the minority answer too."
    body = embed(coord, text, consensus=4)
    assert body["opinfer"]["consensus"] == {"k": 4, "agreed": 3}
    assert body["opinfer"]["node"] != liar.address
    (batch_id,) = coord.c.post_batches()
    j = job(coord, body["opinfer"]["job_id"])
    lie = next(leaf for leaf in j["leaves"] if leaf["node"] == liar.address)
    assert not lie["agrees"] and lie["status"] == "posted"
    assert sum(leaf["agrees"] for leaf in j["leaves"]) == 3

    # A challenger re-executes, disagrees, and plays the game on-chain.
    c = net.deployment.contracts
    challenger = TxSender(net.w3, net.keys["challenger"])
    challenger.call(c["StakeManager"].functions.deposit_bond(), value=10**18)
    program = default_program()
    batch = posted_batch(net, lie["tx_hash"])
    challenger.call(c["DisputeGame"].functions.challenge(
        *batch.challenge_args(batch_id, lie["leaf_index"], program.model_header())))
    coord.c.finalize()  # watches events
    statuses = {leaf["node"]: leaf["status"] for leaf in job(coord, j["id"])["leaves"]}
    assert statuses[liar.address] == "disputed"
    x = JobInput.from_bytes(bytes.fromhex(j["input"][2:]))
    honest = Trace.of(program, x)
    bad = corrupted_trace(program, x, program.num_ops, 0, COL, DELTA)
    assert bad.output_root.hex() == lie["output_root"][2:]
    gid = c["DisputeGame"].functions.game_count().call()
    g, _ = play(GameClient(c["DisputeGame"], TxSender(net.w3, liar.key)),
                GameClient(c["DisputeGame"], challenger), gid, bad, honest)
    assert g["status"] == player.CHALLENGER_WON
    coord.c.finalize()
    after = {leaf["node"]: leaf["status"] for leaf in job(coord, j["id"])["leaves"]}
    assert after[liar.address] == "invalid"
    assert job(coord, j["id"])["status"] == "posted"  # the answer served was the honest one
    assert 'opinfer_disputes_total{event="LeafInvalidated"} 1.0' in httpx.get(f"{coord.url}/metrics").text


def test_proof_trees_are_cached_within_a_leaf_bound_and_rebuilt_alike(coord, net, monkeypatch):
    """Job views keep recent batches' trees up to PROOF_CACHE_LEAVES leaves in
    all; a view after its tree was dropped rebuilds the same proof."""
    from coordinator import service

    monkeypatch.setattr(service, "PROOF_CACHE_LEAVES", 3)
    rollup = net.deployment.contracts["ResultRollup"]
    batches = []
    for b in range(3):
        ids = [embed(coord, f"Proof cache, batch {b}, job {i}.")["opinfer"]["job_id"] for i in range(2)]
        assert len(coord.c.post_batches()) == 1
        batches.append(ids)
    first = [job(coord, i) for i in batches[0]]
    for ids in batches[1:]:
        for job_id in ids:
            job(coord, job_id)
    cached = coord.c.service._proofs
    assert sum(len(t.leaves) for t in cached.values()) <= 3 and len(cached) >= 1
    again = [job(coord, i) for i in batches[0]]   # its tree was dropped: rebuilt
    for before, after in zip(first, again):
        assert after["proof"] == before["proof"] and after["leaf_hash"] == before["leaf_hash"]
        proof = [bytes.fromhex(p[2:]) for p in after["proof"]]
        assert rollup.functions.verify_inclusion(after["batch_id"], after["leaf_index"], after["leaf_hash"],
                                                 proof).call()
