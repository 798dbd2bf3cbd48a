"""Disputes of real jobs of the real models, one per op class, on anvil.

For each op class that all-MiniLM-L6-v2 uses, a node corrupts one element
of one op (every later op recomputed from it, so its output looks
plausible); the real bisection narrows the game to that element and the
StepVerifier rules against the node. Then the same position is disputed by
a challenger who holds the corrupted value: the honest node's claim is
upheld and the challenger loses its bond.
"""

import pytest

from conftest import CHALLENGER_WON, NODE_WON, Driver, make_leaf, post
from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.program import default_program
from opinfer.semantics import ops
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace


@pytest.fixture(scope="module")
def minilm():
    return default_program()


@pytest.fixture(scope="module")
def minilm_id(system, minilm, deployer):
    tx = system.registry.register_model(minilm.name, minilm.model_root, minilm.num_ops, 1000, {"from": deployer})
    return tx.return_value


@pytest.fixture(scope="module")
def job():
    return JobInput(tuple(int(i) for i in fw.encode("Disputes end with one element re-executed on-chain.")))


@pytest.fixture(scope="module")
def honest(minilm, job):
    return Trace.of(minilm, job)


def _first_op(program, code, skip=0):
    found = [i for i, op in enumerate(program.ops) if op.code == code]
    return found[skip]


# (op class, which occurrence, element, delta): the second DENSE occurrence
# after the 4th is a K=1,536 down projection, the widest row the model reads.
CASES = [
    (ops.EMBED_SUM, 0, (2, 7), 5000),
    (ops.LAYER_NORM, 0, (1, 30), 60),
    (ops.DENSE, 0, (3, 11), 60),
    (ops.DENSE, 5, (2, 100), 1 << 16),
    (ops.SCORES, 0, (5, 2), 3000),
    (ops.SOFTMAX, 0, (4, 1), 9000),
    (ops.TRANSPOSE, 0, (9, 3), 90),
    (ops.CONTEXT, 0, (1, 40), 70),
    (ops.RESIDUAL, 0, (2, 50), 1 << 16),
    (ops.LOOKUP, 0, (1, 300), 20000),
    (ops.POOL, 0, (0, 17), 1 << 34),
    (ops.L2NORM, 0, (0, 3), 900),
]


@pytest.mark.parametrize("code,skip,element,delta", CASES, ids=[f"{ops.NAMES[c[0]]}{c[1]}" for c in CASES])
def test_corrupted_element_of_a_real_job_is_narrowed_and_refuted(system, staked, coordinator, nodes, challengers,
                                                                minilm, minilm_id, honest, job, code, skip, element,
                                                                delta):
    position = _first_op(minilm, code, skip) + 1
    row, col = element
    bad = corrupted_trace(minilm, job, position, row, col, delta)
    assert bad.output_root != honest.output_root
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, nodes[0], minilm_id, system.rollup)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, minilm.model_header()),
                                {"from": challengers[0]}).return_value
    end = Driver(system, gid, nodes[0], bad, challengers[0], honest).play()
    assert (end["hi"], end["row"], end["col"]) == (position, row, col)
    assert end["status"] == CHALLENGER_WON
    assert system.stake.slashable(nodes[0]) == 0

    # The same position, honestly computed, is upheld against a challenger
    # who claims the corrupted value.
    batch_id, batch, _ = post(system, coordinator, [make_leaf(honest, nodes[1], minilm_id, system.rollup, job=2)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, minilm.model_header()),
                                {"from": challengers[1]}).return_value
    end = Driver(system, gid, nodes[1], honest, challengers[1], bad).play()
    assert (end["hi"], end["row"], end["col"]) == (position, row, col)
    assert end["status"] == NODE_WON
    assert system.stake.slashable(nodes[1]) > 0


@pytest.mark.parametrize("tokens,lost", [(513, True), (512, False)])
def test_job_beyond_the_position_table_loses_at_once(system, staked, coordinator, nodes, challengers, minilm,
                                                     minilm_id, tokens, lost):
    """Issue 14, point 5: MiniLM has 512 positions (the engine refuses more).
    A node that signs a 513-token job loses in the challenge itself; 512 is
    a normal game."""
    from brownie import chain

    from conftest import ACTIVE, game_state
    from opinfer.semantics.tensor import TensorTree
    from opinfer.trace.leaf import ResultLeaf

    job = JobInput(tuple(range(1000, 1000 + tokens)))
    leaf = ResultLeaf(job_id=(900 + tokens).to_bytes(16, "big"), model_id=minilm_id,
                      input_root=TensorTree.build(job.tensor()).root, output_root=b"\x07" * 32,
                      node=nodes[1].address, input=job.to_bytes())
    batch_id, batch, _ = post(system, coordinator, [leaf.signed(nodes[1].private_key, chain.id, system.rollup.address)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, minilm.model_header()),
                                {"from": challengers[0]}).return_value
    assert game_state(system.game, gid)["status"] == (CHALLENGER_WON if lost else ACTIVE)
