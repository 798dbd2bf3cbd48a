"""Disputes of a real SmolLM2-135M-Instruct job, one per op class, on anvil.

The job: a real prompt, sampled (temperature 0.7, top_p 0.9, a seed, presence
and frequency penalties and a logit bias) with a stop sequence that its second
generated token hits, so every branch of the
decode step is live (prompt and generated steps, the sampling chain, MATCH
and the done flag). For each op class a node's trace has one wrong element
(patched_trace: every other tensor honest; one case recomputes every later
op so that the output looks plausible); the real bisection narrows the game
to that element and the StepVerifier, through DecoderOps, rules against the
node. Then the same position, honestly computed, is upheld against a
challenger who claims the wrong value.
"""

import pytest

from conftest import CHALLENGER_WON, NODE_WON, Driver, make_leaf, post
from opinfer.models.smollm2.program import default_program
from opinfer.models.smollm2.tokenizer import load_tokenizer
from opinfer.semantics import ops
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.outputs import parse_generation
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, patched_trace

MAX_TOKENS = 3


@pytest.fixture(scope="module")
def smollm2():
    return default_program()


@pytest.fixture(scope="module")
def smollm2_id(system, smollm2, deployer):
    tx = system.registry.register_model(smollm2.name, smollm2.model_root, smollm2.num_ops, 1000, {"from": deployer})
    return tx.return_value


@pytest.fixture(scope="module")
def job(smollm2):
    ids = tuple(load_tokenizer().encode("The capital of France is"))
    # penalised (a version-2 job input: presence 0.4, frequency 0.2, a +1.0 bias on token 504)
    sampled = dict(max_tokens=MAX_TOKENS, temperature_milli=700, top_p_q=58982, seed=2026, presence_q=1638,
                   frequency_q=819, logit_bias=((504, 256),))
    free, _ = parse_generation(smollm2.run(JobInput(ids, **sampled))[-1])
    return JobInput(ids, stop_sequences=((49151, 49150), (free[1],)), **sampled)


@pytest.fixture(scope="module")
def honest(smollm2, job):
    trace = Trace.of(smollm2, job)
    tokens, reason = parse_generation(trace.output)
    assert reason == "stop" and len(tokens) == 2     # the stop sequence ends it after two tokens
    return trace


def _op(program, code, occurrence=0):
    return [j for j, op in enumerate(program.ops) if op.code == code][occurrence]


# (op class, occurrence in the template, step (negative: from the end), element, delta).
# L = 5 prompt tokens, so step 3 is the last prompt step and step 4 the first generated one.
CASES = [
    (ops.EMBED_TOKEN, 0, 0, (0, 5), 3),            # token from T_0
    (ops.EMBED_TOKEN, 0, 5, (0, 100), 1),          # token from the previous step's NEXT
    (ops.RMS_NORM, 0, 1, (0, 17), 40),
    (ops.DENSE_BLOCK, 0, 2, (0, 700), 9),           # q|k|v
    (ops.DENSE_BLOCK, 3, 1, (0, 300), 1 << 12),     # down projection, a 1,536-wide row
    (ops.DENSE_BLOCK, -1, 4, (100, 17), 1 << 16),   # the folded LM head
    (ops.ROPE, 0, 3, (0, 601), 5),
    (ops.APPEND, 0, 3, (1, 50), 7),                # K cache: a cached row
    (ops.APPEND, 0, 3, (3, 50), 7),                # K cache: the new row
    (ops.APPEND, 1, 3, (10, 1), 7),                # V^T cache: a cached column
    (ops.APPEND, 1, 3, (10, 3), 7),                # V^T cache: the new column
    (ops.SCORES, 0, 3, (4, 2), 100),
    (ops.EXP_SUMS, 0, 3, (2, 0), 1 << 10),         # the attention softmax's chunk sums
    (ops.PROBS, 0, 3, (2, 1), 500),
    (ops.CONTEXT, 0, 2, (0, 200), 50),
    (ops.RESIDUAL, 0, 1, (0, 11), 1 << 10),
    (ops.SWIGLU, 0, 2, (0, 1000), 77),
    (ops.PENALTY, 0, 5, (1, 248), 1),              # the biased token 504, a generated step
    (ops.CHUNK_ARGMAX, 0, 4, (0, 50), 1 << 17),
    (ops.SAMPLE_WEIGHTS, 0, 4, (3, 200), 1000),
    (ops.MASKED_SUMS, 0, 4, (0, 5), 10),           # a chunk's total
    (ops.MASKED_SUMS, 5, 4, (0, 7), 10),           # a bisection step's sums
    (ops.MASKED_SUMS, -1, 4, (0, 0), 10),          # the kept mass
    (ops.BISECT, 8, 4, (0, 1), 1),
    (ops.PICK, 0, 4, (0, 1), 7),
    (ops.PICK_TOKEN, 0, 5, (0, 0), 1),
    (ops.NEXT, 0, 0, (0, 0), 1),                   # a prompt token
    (ops.NEXT, 0, 4, (0, 0), 1),                   # a generated token
    (ops.MATCH, 0, 5, (0, 0), -1),                 # the stop sequence's hit
    (ops.GEN, 0, -1, (0, 1), 5),
    (ops.GEN, 0, -1, (0, MAX_TOKENS), -1),         # the done flag
]


@pytest.mark.parametrize("code,occurrence,step,element,delta", CASES,
                         ids=[f"{ops.NAMES[c[0]]}{c[1]}-step{c[2]}-{c[3][0]}.{c[3][1]}" for c in CASES])
def test_wrong_element_of_a_real_smollm2_job_is_narrowed_and_refuted(system, staked, coordinator, nodes, challengers,
                                                                     smollm2, smollm2_id, job, honest, code,
                                                                     occurrence, step, element, delta):
    steps = honest.n // smollm2.num_ops
    position = (step % steps) * smollm2.num_ops + _op(smollm2, code, occurrence) + 1
    row, col = element
    if code == ops.DENSE_BLOCK and occurrence == 0:
        bad = corrupted_trace(smollm2, job, position, row, col, delta)   # every later op recomputed
        assert bad.state_root(bad.n) != honest.state_root(honest.n)
    else:
        bad = patched_trace(honest, position, row, col, delta)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, nodes[0], smollm2_id, system.rollup)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, smollm2.model_header()),
                                {"from": challengers[0]}).return_value
    end = Driver(system, gid, nodes[0], bad, challengers[0], honest).play()
    assert (end["hi"], end["row"], end["col"]) == (position, row, col)
    assert end["status"] == CHALLENGER_WON
    assert system.stake.slashable(nodes[0]) == 0

    batch_id, batch, _ = post(system, coordinator, [make_leaf(honest, nodes[1], smollm2_id, system.rollup, job=2)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, smollm2.model_header()),
                                {"from": challengers[1]}).return_value
    end = Driver(system, gid, nodes[1], honest, challengers[1], bad).play()
    assert (end["hi"], end["row"], end["col"]) == (position, row, col)
    assert end["status"] == NODE_WON
    assert system.stake.slashable(nodes[1]) > 0


@pytest.mark.parametrize("change,lost", [
    (dict(max_tokens=4092), False),         # 5 + 4092 - 1 = 4096 positions: the RoPE table's
    (dict(max_tokens=4093), True),          # 4,097 positions: beyond the RoPE table
    (dict(tokens=(7,), max_tokens=4095), False),   # 4,095 positions, MAX_NEW new tokens
    (dict(tokens=(7,), max_tokens=4096), True),    # 4,096 positions but a GEN row of 4,097 values
    (dict(max_tokens=0), True),             # no new token
    (dict(temperature_milli=2001), True),   # above temperature 2.0
    (dict(tokens=(49152,)), True),          # outside the vocabulary
])
def test_job_outside_the_engine_limits_loses_at_once(system, staked, coordinator, nodes, challengers, smollm2,
                                                     smollm2_id, job, change, lost):
    """Issue 14, point 5: what node/engines.py refuses, job_shape refuses: a
    node that signed such a job loses in the challenge itself (a step would
    revert and the honest challenger lose on time)."""
    from dataclasses import replace

    from brownie import chain

    from conftest import ACTIVE, game_state
    from opinfer.semantics.tensor import TensorTree
    from opinfer.trace.leaf import ResultLeaf

    bad = replace(job, **change)
    leaf = ResultLeaf(job_id=(1700 + len(str(change))).to_bytes(16, "big"), model_id=smollm2_id,
                      input_root=TensorTree.build(bad.tensor()).root, output_root=b"\x07" * 32,
                      node=nodes[2].address, input=bad.to_bytes())
    batch_id, batch, _ = post(system, coordinator, [leaf.signed(nodes[2].private_key, chain.id, system.rollup.address)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, smollm2.model_header()),
                                {"from": challengers[0]}).return_value
    assert game_state(system.game, gid)["status"] == (CHALLENGER_WON if lost else ACTIVE)
