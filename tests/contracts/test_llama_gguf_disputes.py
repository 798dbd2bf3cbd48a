"""Random-weight llama-family GGUF files (opinfer/models/llama/fixtures.py), served and
disputed op by op on anvil.

Three files the gguf package writes: llama with multi-head attention (a sampled job),
a Mistral-like llama file with grouped-query attention and an untied LM head (a greedy
job with penalties and a logit bias), qwen2 with Q/K/V biases and grouped-query
attention (a greedy job that a stop sequence ends). Each file is a chat model
(parts.gguf_spec: its program built from the metadata alone, its root registered on the
ModelRegistry) served by its Runtime, whose output is the trace's. The StepVerifier
recomputes every template op of each program at a prompt step and at generated steps;
then, for each op class of the decoder program (spread over the three files), a node's
trace holds one wrong element, the real bisection narrows the game to it and the node
is slashed. The qwen2 bias add (a RESIDUAL over a weight row) is also upheld when a
challenger lies about it.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CHALLENGER_WON, NODE_WON, Driver, make_leaf, post
from opinfer.models.llama.fixtures import SHAPES, write_gguf
from opinfer.semantics import ops
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.program import job_steps
from opinfer.trace.state import Trace
from opinfer.trace.testing import patched_trace

GAS: dict[str, int] = {}
STEP_GAS: dict[str, int] = {}


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    from opinfer.models.llama.parts import gguf_spec

    folder = tmp_path_factory.mktemp("gguf")
    return {key: gguf_spec(write_gguf(folder / f"{key}.gguf", shape)) for key, shape in SHAPES.items()}


@pytest.fixture(scope="module")
def programs(specs):
    return {key: spec.load_program() for key, spec in specs.items()}


def _job(key: str, program) -> JobInput:
    ids = (3, 77, 150, 9)
    if key == "mha":
        return JobInput(ids, max_tokens=3, temperature_milli=900, top_p_q=52429, seed=(1 << 63) + 12345)
    if key == "gqa":
        return JobInput(ids, max_tokens=3, presence_q=-4096, frequency_q=8192, logit_bias=((5, 1280), (300, -25600)))
    free = program.run(JobInput(ids, max_tokens=3))[-1][0]
    return JobInput(ids, max_tokens=3, stop_sequences=((255, 254), (int(free[1]),)))   # ends after two tokens


@pytest.fixture(scope="module")
def honest(specs, programs):
    """key -> the honest trace of its job, whose output the Runtime serving the file computes."""
    from opinfer.models import Runtime

    out = {}
    for key, program in programs.items():
        trace = Trace.of(program, _job(key, program))
        served, payload = Runtime(specs[key]).run(trace.job)
        assert np.array_equal(served, trace.output), key
        out[key] = trace
    assert out["qwen2"].output[0, -1] == 1                  # the stop sequence ended it
    return out


@pytest.fixture(scope="module")
def model_ids(system, programs, deployer):
    return {key: system.registry.register_model(p.name, p.model_root, p.num_ops, 1000, {"from": deployer}).return_value
            for key, p in programs.items()}


def _at(program, code: int, occurrence: int = 0) -> int:
    return [j for j, op in enumerate(program.ops) if op.code == code][occurrence]


def _job_word(trace: Trace) -> int:
    job = trace.job
    return len(job.tokens) | job.tokens_at << 32 | job_steps(trace.program.steps_mode, job) << 64


def test_every_template_op_computes_the_trace_on_chain(system, programs, honest):
    """Each file's every template op, at the last prompt step and the last step, at two
    elements: StepVerifier.compute_element gives the trace's value (gas under 5M)."""
    for key, p in programs.items():
        trace = honest[key]
        ok, num_ops, job, root = system.verifier.job_shape(p.model_root, p.num_ops, p.model_header(),
                                                           trace.job.to_bytes())
        assert ok and num_ops == trace.n and bytes(root) == trace.input_root
        steps = job_steps(p.steps_mode, trace.job)
        rng = np.random.default_rng(len(key))
        for j, op in enumerate(p.ops):
            for step in (len(trace.job.tokens) - 1, steps - 1):
                i = step * p.num_ops + j
                out = trace.tensors[i + 1]
                for r, c in {(out.shape[0] - 1, out.shape[1] - 1),
                             (int(rng.integers(out.shape[0])), int(rng.integers(out.shape[1])))}:
                    args = (p.model_root, p.num_ops, _job_word(trace), i, trace.state_root(i), r, c, p.header(i),
                            trace.witness(i, r, c))
                    assert system.verifier.compute_element(*args) == int(out[r, c]), (key, op.name, j, step, r, c)
                    if step == steps - 1:
                        gas = system.verifier.compute_element.estimate_gas(*args)
                        GAS[op.name] = max(GAS.get(op.name, 0), gas)


# (file, op class, occurrence in the template, step, element, delta). Jobs: 4 prompt
# tokens, 3 new ones: steps 0..2 read the prompt, 3..5 produce tokens (qwen2's stops
# after two). Every decoder op class, and the family's own cases: the untied head, the
# GQA attention, the qwen2 bias add and its NEOX-ordered q|k|v.
CASES = [
    ("mha", ops.EMBED_TOKEN, 0, 4, (0, 3), 50),          # the token picked at step 3
    ("mha", ops.RMS_NORM, 0, 1, (0, 17), 500),
    ("mha", ops.SWIGLU, 0, 2, (0, 100), 1 << 14),
    ("mha", ops.DENSE_BLOCK, 3, 3, (0, 10), 1 << 12),    # down
    ("mha", ops.SAMPLE_WEIGHTS, 0, 4, (0, 30), 7),
    ("mha", ops.MASKED_SUMS, 1, 4, (0, 0), 5),           # a bisection step's sums
    ("mha", ops.BISECT, 0, 3, (0, 1), -1),
    ("mha", ops.PICK, 0, 4, (0, 1), -7),
    ("mha", ops.PICK_TOKEN, 0, 3, (0, 0), 1),
    ("gqa", ops.DENSE_BLOCK, -1, 4, (1, 7), 1 << 20),    # the untied LM head (Q8_0, folded)
    ("gqa", ops.SCORES, 0, 3, (5, 2), 3000),             # 8 heads over 2 KV heads
    ("gqa", ops.EXP_SUMS, 0, 3, (4, 0), 1 << 12),        # the score multiplier (head width 32)
    ("gqa", ops.PROBS, 0, 3, (4, 1), 900),
    ("gqa", ops.CONTEXT, 0, 2, (0, 40), 70),
    ("gqa", ops.PENALTY, 0, 4, (0, 5), 1),               # a biased token
    ("gqa", ops.CHUNK_ARGMAX, 0, 3, (0, 1), 1 << 17),
    ("gqa", ops.NEXT, 0, 4, (0, 0), 1),                  # argmax
    ("qwen2", ops.DENSE_BLOCK, 0, 0, (0, 11), 300),      # q|k|v, rows in NEOX order
    ("qwen2", ops.RESIDUAL, 0, 1, (0, 20), 40),          # + the Q/K/V bias
    ("qwen2", ops.ROPE, 0, 2, (0, 65), 300),
    ("qwen2", ops.APPEND, 0, 3, (1, 9), 40),             # K cache, a cached row
    ("qwen2", ops.APPEND, 1, 2, (3, 2), 40),             # V^T cache, the new column
    ("qwen2", ops.RESIDUAL, 1, 2, (0, 11), 1 << 10),     # x + o
    ("qwen2", ops.MATCH, 0, 4, (0, 0), -1),              # the stop sequence's hit
    ("qwen2", ops.GEN, 0, 4, (0, 2), 1),                 # the done flag
]


@pytest.mark.parametrize("key,code,occurrence,step,element,delta", CASES,
                         ids=[f"{c[0]}-{ops.NAMES[c[1]]}{c[2]}-s{c[3]}-{c[4][0]}.{c[4][1]}" for c in CASES])
def test_a_lie_in_a_gguf_model_is_narrowed_and_slashed(system, staked, coordinator, nodes, challengers, programs,
                                                       model_ids, honest, key, code, occurrence, step, element, delta):
    p, good = programs[key], honest[key]
    position = step * p.num_ops + _at(p, code, occurrence) + 1
    row, col = element
    bad = patched_trace(good, position, row, col, delta)
    assert bad.state_root(position) != good.state_root(position)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, nodes[0], model_ids[key], system.rollup)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, p.model_header()),
                                {"from": challengers[0]}).return_value
    driver = Driver(system, gid, nodes[0], bad, challengers[0], good)
    end = driver.play()
    assert (end["hi"], end["row"], end["col"]) == (position, row, col)
    assert end["status"] == CHALLENGER_WON
    assert system.stake.slashable(nodes[0]) == 0
    assert driver.txs[-1].fn_name == "step"
    STEP_GAS[ops.NAMES[code]] = max(STEP_GAS.get(ops.NAMES[code], 0), driver.txs[-1].gas_used)


def test_every_decoder_op_class_is_disputed(programs):
    decoder = set(range(ops.EMBED_TOKEN, ops.GEN + 1)) | {ops.SCORES, ops.CONTEXT, ops.RESIDUAL, ops.EXP_SUMS,
                                                            ops.PROBS, ops.PENALTY}
    assert all({op.code for op in p.ops} == decoder for p in programs.values())
    assert {c[1] for c in CASES} == decoder


def test_the_bias_add_honestly_computed_is_upheld(system, staked, coordinator, nodes, challengers, programs,
                                                  model_ids, honest):
    p, good = programs["qwen2"], honest["qwen2"]
    position = 1 * p.num_ops + _at(p, ops.RESIDUAL, 0) + 1
    bad = patched_trace(good, position, 0, 20, 40)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(good, nodes[1], model_ids["qwen2"], system.rollup, job=2)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, p.model_header()),
                                {"from": challengers[1]}).return_value
    end = Driver(system, gid, nodes[1], good, challengers[1], bad).play()
    assert (end["hi"], end["row"], end["col"]) == (position, 0, 20)
    assert end["status"] == NODE_WON
    assert system.stake.slashable(nodes[1]) > 0


def test_one_step_gas():
    """Gas of DisputeGame.step per op class (the largest seen above) and of
    compute_element alone per op class: all under 5M (run with -s to print)."""
    for title, table in (("DisputeGame.step", STEP_GAS), ("compute_element", GAS)):
        if table:
            print(f"\n{title} (llama-family GGUF fixtures):")
        for name, gas in sorted(table.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<16}{gas:>10}")
            assert gas < 5_000_000
