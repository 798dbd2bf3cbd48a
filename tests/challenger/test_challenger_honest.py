"""Zero false disputes: 220 honest jobs of both real models (150 MiniLM
embeddings of real sentences, 70 SmolLM2 generations: greedy, seeded
sampling and stop sequences), executed and signed by the real node code,
posted in batches on anvil, all re-executed by the challenger (sample rate
1): every leaf checked, none mismatched, no game started.

The models are registered under placeholder roots (like tests/coordinator):
the cheap output check never reads the root; only a dispute does, and it
first rebuilds the program and refuses to play if the roots differ."""

import logging

import numpy as np
import pytest
from web3 import HTTPProvider, Web3

from challenger.chain import Chain
from challenger.executors import default_executors
from challenger.metrics import Metrics
from challenger.sampler import Sampler
from challenger.service import Challenger
from challenger.store import Store
from node.app import ExecuteRequest, Node
from opinfer.chain.anvil import Anvil, dev_keys
from opinfer.chain.deploy import ProtocolParams, deploy
from opinfer.chain.sender import TxSender
from opinfer.models.minilm.spec import NAME as MINILM
from opinfer.models.smollm2.spec import NAME as SMOLLM2
from opinfer.semantics import merkle
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.leaf import Batch, ResultLeaf

N_MINILM, N_SMOLLM2, PER_BATCH = 150, 70, 32
WORDS = ("the cat sat on a mat while proofs of fraud settle on chain and nodes stake ether to serve "
         "embeddings for search engines every morning at dawn quietly").split()


@pytest.fixture(scope="module")
def net():
    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        keys = dev_keys(4)
        owner, coordinator, challenger, node = (TxSender(w3, k) for k in keys)
        d = deploy(w3, owner, ProtocolParams(), coordinators=(coordinator.address,))
        reg = d.contracts["ModelRegistry"].functions
        ids = {}
        for name, ops in ((MINILM, 95), (SMOLLM2, 527)):
            owner.call(reg.register_model(name, merkle.keccak(name.encode()), ops, 0))
            ids[name] = reg.model_id_by_name(name).call()
        node.call(d.contracts["StakeManager"].functions.stake_eth(), value=2 * 10**18)
        yield w3, d, keys, ids, coordinator


def jobs() -> list[tuple[str, JobInput]]:
    from opinfer.models.minilm.weights import encode

    rng = np.random.default_rng(2024)
    out = []
    for i in range(N_MINILM):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))
        out.append((MINILM, JobInput(tuple(int(t) for t in encode(f"{i}: {text}")))))
    for i in range(N_SMOLLM2):
        prompt = tuple(int(t) for t in rng.integers(0, 49152, size=int(rng.integers(1, 5))))
        kind = i % 3
        if kind == 0:
            job = JobInput(prompt, max_tokens=int(rng.integers(1, 3)))
        elif kind == 1:
            job = JobInput(prompt, max_tokens=2, temperature_milli=800, top_p_q=60000, seed=int(rng.integers(1 << 62)))
        else:
            job = JobInput(prompt, max_tokens=2, stop_sequences=((int(rng.integers(49152)),), (198,)))
        out.append((SMOLLM2, job))
    return out


def test_zero_disputes_over_220_honest_jobs_of_both_models(net, tmp_path):
    w3, d, keys, ids, coordinator = net
    rollup = d.addresses["ResultRollup"]
    honest = Node(keys[3], w3.eth.chain_id, rollup, ids)
    leaves = []
    for n, (model, job) in enumerate(jobs()):
        out = honest.execute(ExecuteRequest(job_id="0x" + n.to_bytes(16, "big").hex(), model=model,
                                            model_id=ids[model], input="0x" + job.to_bytes().hex()))
        leaves.append(ResultLeaf(n.to_bytes(16, "big"), ids[model], bytes.fromhex(out["input_root"][2:]),
                                 bytes.fromhex(out["output_root"][2:]), honest.address, job.to_bytes(),
                                 bytes.fromhex(out["signature"][2:])))
    for k in range(0, len(leaves), PER_BATCH):
        coordinator.call(d.contracts["ResultRollup"].functions.post_batch(*Batch(leaves[k:k + PER_BATCH]).calldata))

    chain = Chain(w3, TxSender(w3, keys[2]), rollup)
    c = Challenger(chain, Store(tmp_path / "c.db"), default_executors(), Sampler(b"h" * 32, 1.0), Metrics(),
                   logging.getLogger("test.challenger.honest"))
    c.tick()
    text = c.metrics.render().decode()
    assert f'opinfer_challenger_leaves_checked_total{{model="{MINILM}"}} {float(N_MINILM)}' in text
    assert f'opinfer_challenger_leaves_checked_total{{model="{SMOLLM2}"}} {float(N_SMOLLM2)}' in text
    assert "opinfer_challenger_mismatches_total 0.0" in text
    assert "leaves_unverifiable_total{" not in text
    assert c.store.disputes() == [] and c.store.suspects() == set()
    assert d.contracts["DisputeGame"].functions.game_count().call() == 0
