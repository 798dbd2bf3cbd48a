"""Disputes of toy decoder jobs on anvil, one per decoder op class.

The toy decoder (opinfer.trace.testing.toy_decoder_program: SmolLM2 cut to
two blocks and 512 tokens, every decoder op class, 79 ops per step) runs a
greedy job, a sampling job (temperature 0.9, top_p 0.8), a greedy job with
stop sequences and a greedy job with presence/frequency penalties and logit
bias (a version-2 job input). First the StepVerifier (with DecoderOps) recomputes elements
of every op class at step 0 (previous-step slots NOT_READ), in the prompt and
in the generated steps and must agree with the trace. Then, for each op class,
a node corrupts one element (every later op recomputed from it); the real
bisection narrows the game to that element and the StepVerifier rules against
the node; the same position honestly computed is upheld against a challenger
holding the corrupted value.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CHALLENGER_WON, NODE_WON, Driver, make_leaf, post
from opinfer.models.smollm2.testing import long_toy_decoder, long_toy_job, toy_decoder_job, toy_decoder_program
from opinfer.semantics import ops
from opinfer.semantics.program import job_steps
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, patched_trace

KINDS = ("greedy", "sample", "stop", "penalty")
# The op classes a decoder step runs (SCORES, CONTEXT and RESIDUAL are the encoder's, reused;
# EXP_SUMS and PROBS the attention softmax in chunks).
DECODER_CODES = ((ops.SCORES, ops.CONTEXT, ops.RESIDUAL) + tuple(range(ops.EMBED_TOKEN, ops.GEN + 1))
                 + (ops.EXP_SUMS, ops.PROBS, ops.PENALTY))
GAS: dict[str, int] = {}


@pytest.fixture(scope="module")
def decoder():
    return toy_decoder_program()


@pytest.fixture(scope="module")
def decoder_id(system, decoder, deployer):
    tx = system.registry.register_model(decoder.name, decoder.model_root, decoder.num_ops, 1000, {"from": deployer})
    return tx.return_value


@pytest.fixture(scope="module")
def traces(decoder):
    return {kind: Trace.of(decoder, toy_decoder_job(kind)) for kind in KINDS}


def job_word(trace: Trace) -> int:
    """What StepVerifier.job_shape returns for the job: L | tokens_at << 32 | steps << 64."""
    job = trace.job
    return len(job.tokens) | job.tokens_at << 32 | job_steps(trace.program.steps_mode, job) << 64


def compute_args(trace: Trace, op_index: int, row: int, col: int, witness: bytes | None = None) -> tuple:
    p = trace.program
    if witness is None:
        witness = trace.witness(op_index, row, col)
    return (p.model_root, p.num_ops, job_word(trace), op_index, trace.state_root(op_index), row, col,
            p.header(op_index), witness)


def template_ops(program) -> list[int]:
    """One template op per (opcode, params[:2]) (e.g. both DENSE_BLOCK folds, both
    APPEND orientations, both MASKED_SUMS modes), plus the last BISECT."""
    seen, out = set(), []
    for j, op in enumerate(program.ops):
        key = (op.code, op.params[:2])
        if op.code in DECODER_CODES and key not in seen:
            seen.add(key)
            out.append(j)
    out.append(max(j for j, op in enumerate(program.ops) if op.code == ops.BISECT))
    return out


def steps_of(trace: Trace) -> list[int]:
    """Step 0, the last prompt step, the first generated step and the last step."""
    n, steps = len(trace.job.tokens), job_steps(trace.program.steps_mode, trace.job)
    return sorted({0, n - 2 if n > 1 else 0, n - 1, steps - 1})


def test_job_shape_and_dims(system, decoder, traces):
    """job_shape packs (L, tokens_at, steps); every op's output shape on chain
    (dims with the tokens_at and M fields) is the trace's."""
    for trace in traces.values():
        ok, num_ops, job, root = system.verifier.job_shape(decoder.model_root, decoder.num_ops,
                                                           decoder.model_header(), trace.job.to_bytes())
        assert ok and num_ops == trace.n and job == job_word(trace) and bytes(root) == trace.input_root
    trace = traces["stop"]  # stop words: tokens_at > 10
    for i in range(0, trace.n, 7):
        shape = system.verifier.op_output_shape(decoder.model_root, decoder.num_ops, job_word(trace), i,
                                                decoder.header(i))
        assert tuple(shape) == trace.tensors[i + 1].shape, i


@pytest.mark.parametrize("kind", KINDS)
def test_every_decoder_op_class_matches_the_trace(system, decoder, traces, kind):
    trace = traces[kind]
    rng = np.random.default_rng(len(kind))
    for j in template_ops(decoder):
        for step in steps_of(trace):
            i = step * decoder.num_ops + j
            out = trace.tensors[i + 1]
            elements = {(0, 0), (out.shape[0] - 1, out.shape[1] - 1),
                        (int(rng.integers(out.shape[0])), int(rng.integers(out.shape[1])))}
            for r, c in sorted(elements):
                args = compute_args(trace, i, r, c)
                got = system.verifier.compute_element(*args)
                assert got == int(out[r, c]), (kind, ops.NAMES[decoder.ops[j].code], j, step, r, c)
                name = ops.NAMES[decoder.ops[j].code]
                GAS[name] = max(GAS.get(name, 0), system.verifier.compute_element.estimate_gas(*args))



# (job kind, template op, step, element, delta): every decoder op class (and the
# encoder classes the decoder reuses), both branches of the rules that have two
# (APPEND's cache row vs new row, EMBED_TOKEN's prompt vs picked token, NEXT's
# prompt / argmax / pick, PENALTY's version 1 / biased / generated tokens), step 0
# where a previous-step slot is NOT_READ, the three dense layers (q|k|v, the
# 3,072-wide gate|up, the 1,536-wide down) and the folded LM head. Template ops:
# 0 EMBED_TOKEN, 1 RMS_NORM, 2 DENSE_BLOCK (q|k|v), 3 ROPE, 4 APPEND (K), 5 APPEND
# (V^T), 6 SCORES, 7 EXP_SUMS, 8 PROBS, 9 CONTEXT, 11 RESIDUAL, 13 DENSE_BLOCK
# (gate|up), 14 SWIGLU, 15 DENSE_BLOCK (down), 34 the LM head, 35 PENALTY, 36
# CHUNK_ARGMAX, 37 SAMPLE_WEIGHTS, 38 MASKED_SUMS (totals), 39 MASKED_SUMS (mode 0),
# 40 the first BISECT, 72 the last, 74 PICK, 75 PICK_TOKEN, 76 NEXT, 77 MATCH, 78 GEN. The toy jobs have L = 4, M = 3: steps
# 0..2 are the prompt's, 3..5 produce the generated tokens.
CASES = [
    ("greedy", 0, 0, (0, 7), 50),            # EMBED_TOKEN, prompt token, previous NEXT not read
    ("sample", 0, 4, (0, 100), 50),          # EMBED_TOKEN, the token picked at step 3
    ("greedy", 1, 1, (0, 30), 500),          # RMS_NORM
    ("greedy", 2, 0, (0, 11), 300),          # DENSE_BLOCK q|k|v
    ("sample", 13, 2, (0, 2500), 300),       # DENSE_BLOCK gate|up, a column past 2,048
    ("greedy", 15, 3, (0, 100), 1 << 12),    # DENSE_BLOCK down, K = 1,536
    ("sample", 34, 5, (1, 7), 1 << 20),      # DENSE_BLOCK folded LM head
    ("greedy", 3, 2, (0, 65), 300),          # ROPE
    ("greedy", 4, 0, (0, 5), 40),            # APPEND K, new row at step 0 (cache not read)
    ("sample", 20, 3, (1, 9), 40),           # APPEND K, cached row
    ("greedy", 5, 4, (3, 2), 40),            # APPEND V^T, cached column
    ("stop", 21, 2, (100, 2), 40),           # APPEND V^T, new column
    ("greedy", 6, 3, (5, 2), 3000),          # SCORES
    ("sample", 7, 4, (4, 0), 1 << 12),       # EXP_SUMS
    ("sample", 8, 4, (4, 1), 900),           # PROBS
    ("greedy", 9, 3, (0, 40), 70),           # CONTEXT
    ("sample", 11, 2, (0, 50), 1 << 16),     # RESIDUAL
    ("greedy", 14, 1, (0, 700), 1 << 14),    # SWIGLU
    ("greedy", 36, 3, (0, 1), 1 << 17),      # CHUNK_ARGMAX
    ("greedy", 37, 3, (1, 3), 7),            # SAMPLE_WEIGHTS, greedy (all zero)
    ("sample", 37, 4, (0, 30), 7),           # SAMPLE_WEIGHTS
    ("sample", 38, 3, (0, 1), 5),            # MASKED_SUMS, totals (mode 1)
    ("sample", 39, 4, (0, 0), 5),            # MASKED_SUMS, mode 0
    ("sample", 40, 3, (0, 1), -1),           # BISECT, the first (weight bounds)
    ("sample", 72, 5, (0, 0), 1),            # BISECT, the last
    ("sample", 74, 4, (0, 1), -7),           # PICK
    ("greedy", 74, 3, (0, 1), 3),            # PICK, greedy (0, 0)
    ("sample", 75, 3, (0, 0), 1),            # PICK_TOKEN
    ("greedy", 75, 4, (0, 0), 2),            # PICK_TOKEN, greedy (0)
    ("greedy", 76, 1, (0, 0), 1),            # NEXT, the prompt's next token
    ("greedy", 76, 4, (0, 0), 1),            # NEXT, argmax
    ("sample", 76, 5, (0, 0), 1),            # NEXT, picked
    ("stop", 77, 0, (0, 0), 1),              # MATCH at step 0 (previous GEN not read)
    ("stop", 77, 3, (0, 0), 1),              # MATCH, the first generated token ends a stop sequence
    ("greedy", 77, 5, (0, 0), 1),            # MATCH, no stop sequence
    ("stop", 78, 0, (0, 3), 1),              # GEN at step 0 (previous GEN not read)
    ("greedy", 78, 4, (0, 0), 1),            # GEN, a copied id
    ("stop", 78, 5, (0, 1), 5),              # GEN after the stop: PAD
    ("greedy", 35, 4, (1, 3), 1),            # PENALTY, a version-1 job (the logits as they are)
    ("penalty", 35, 0, (0, 5), 1),           # PENALTY at step 0 (previous GEN not read): a biased token
    ("penalty", 35, 5, (0, 216), 1),         # PENALTY, token 216 generated once before: presence and frequency
    ("penalty", 35, 4, (0, 7), 1),           # PENALTY, a token neither generated nor biased
]


def _case_id(case) -> str:
    kind, j, step, (r, c), _ = case
    return f"{kind}-op{j}-s{step}-{r}.{c}"


@pytest.mark.parametrize("kind,j,step,element,delta", CASES, ids=[_case_id(c) for c in CASES])
def test_corrupted_decoder_element_is_narrowed_and_refuted(system, staked, coordinator, nodes, challengers, decoder,
                                                           decoder_id, traces, kind, j, step, element, delta):
    honest = traces[kind]
    position = step * decoder.num_ops + j + 1
    row, col = element
    bad = corrupted_trace(decoder, honest.job, position, row, col, delta)
    assert bad.state_root(position) != honest.state_root(position)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, nodes[0], decoder_id, system.rollup)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, decoder.model_header()),
                                {"from": challengers[0]}).return_value
    driver = Driver(system, gid, nodes[0], bad, challengers[0], honest)
    end = driver.play()
    assert (end["hi"], end["row"], end["col"]) == (position, row, col)
    assert end["status"] == CHALLENGER_WON
    assert system.stake.slashable(nodes[0]) == 0
    step_tx = driver.txs[-1]
    assert step_tx.fn_name == "step"
    name = ops.NAMES[decoder.ops[j].code]
    STEP_GAS[name] = max(STEP_GAS.get(name, 0), step_tx.gas_used)

    # The same position, honestly computed, is upheld against a challenger
    # who claims the corrupted value.
    batch_id, batch, _ = post(system, coordinator, [make_leaf(honest, nodes[1], decoder_id, system.rollup, job=2)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, decoder.model_header()),
                                {"from": challengers[1]}).return_value
    end = Driver(system, gid, nodes[1], honest, challengers[1], bad).play()
    assert (end["hi"], end["row"], end["col"]) == (position, row, col)
    assert end["status"] == NODE_WON
    assert system.stake.slashable(nodes[1]) > 0


def test_a_node_that_ignores_the_penalties_is_narrowed_to_the_penalty_op_and_slashed(
        system, staked, coordinator, nodes, challengers, decoder, decoder_id, traces):
    """A node that serves a penalised job as if it had no penalties (its trace
    passes the logits through every PENALTY op, the T_0 it signed is the job's)
    loses at step 0's PENALTY, on an element the bias changes."""
    from opinfer.trace.outputs import parse_generation
    from opinfer.trace.testing import unpenalised_trace

    honest = traces["penalty"]
    bad = unpenalised_trace(decoder, honest.job)
    assert parse_generation(bad.output) != parse_generation(honest.output)   # the answer differs too
    j = next(k for k, op in enumerate(decoder.ops) if op.code == ops.PENALTY)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, nodes[0], decoder_id, system.rollup, job=3)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, decoder.model_header()),
                                {"from": challengers[0]}).return_value
    end = Driver(system, gid, nodes[0], bad, challengers[0], honest).play()
    assert end["hi"] == j + 1                                         # step 0's PENALTY
    changed = {(0, 5), (1, 300 - 256)}                                # the two biased tokens
    assert (end["row"], end["col"]) in changed
    assert end["status"] == CHALLENGER_WON
    assert system.stake.slashable(nodes[0]) == 0


STEP_GAS: dict[str, int] = {}


def test_one_step_gas_per_decoder_op_class():
    """Gas of DisputeGame.step (the largest seen per op class above; run with -s
    to print) and of StepVerifier.compute_element alone: all well under 5M."""
    for title, table in (("DisputeGame.step", STEP_GAS), ("compute_element", GAS)):
        if table:
            print(f"\n{title}:")
        for name, gas in sorted(table.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<16}{gas:>10}")
            assert gas < 5_000_000


# ---------------------------------------------------------------- a long-context job

@pytest.fixture(scope="module")
def long_decoder():
    return long_toy_decoder()[0]


@pytest.fixture(scope="module")
def long_id(system, long_decoder, deployer):
    tx = system.registry.register_model(long_decoder.name, long_decoder.model_root, long_decoder.num_ops, 1000,
                                        {"from": deployer})
    return tx.return_value


@pytest.fixture(scope="module")
def long_trace(long_decoder):
    """A sampled job of 1,030 prompt tokens and 3 new ones: 1,032 positions, the
    attention softmax over five chunks of 256 (SmolLM2's widths, one block)."""
    return Trace.of(long_decoder, long_toy_job())


def _code_at(program, code: int) -> int:
    return next(j for j, op in enumerate(program.ops) if op.code == code)


def test_long_context_rows_are_verified_on_chain(system, long_decoder, long_trace):
    """Every op class whose rows grow with the context, at the last step (1,032
    positions): the chain computes the trace's values, each one-step far under 5M."""
    p, trace = long_decoder, long_trace
    step = job_steps(p.steps_mode, trace.job) - 1
    for code, params0, elements in ((ops.SCORES, None, [(8, 1031)]), (ops.EXP_SUMS, None, [(0, 0), (8, 4), (3, 5)]),
                                    (ops.PROBS, None, [(0, 1031), (4, 700)]), (ops.CONTEXT, None, [(0, 575)]),
                                    (ops.APPEND, 1, [(191, 1030), (5, 1031)]), (ops.GEN, None, [(0, 2)])):
        j = next(j for j, op in enumerate(p.ops) if op.code == code and (params0 is None or op.params[0] == params0))
        i = step * p.num_ops + j
        for r, c in elements:
            args = compute_args(trace, i, r, c)
            assert system.verifier.compute_element(*args) == int(trace.tensors[i + 1][r, c]), (ops.NAMES[code], r, c)
            gas = system.verifier.compute_element.estimate_gas(*args)
            LONG_GAS[ops.NAMES[code]] = max(LONG_GAS.get(ops.NAMES[code], 0), gas)
            assert gas < 5_000_000


LONG_GAS: dict[str, int] = {}


@pytest.mark.parametrize("code,element,delta", [(ops.EXP_SUMS, (6, 4), 1 << 10), (ops.PROBS, (2, 1029), 7)],
                         ids=["exp_sums", "probs"])
def test_long_context_lie_in_the_chunked_softmax_is_narrowed_and_slashed(system, staked, coordinator, nodes,
                                                                        challengers, long_decoder, long_id,
                                                                        long_trace, code, element, delta):
    """A node lies in the attention softmax of the last step of a 1,032-position
    job (the chunk of positions 1,024..1,031, or one probability past 1,024): the
    bisection narrows the game to that element, the one-step refutes it and the
    node is slashed."""
    honest, p = long_trace, long_decoder
    step = job_steps(p.steps_mode, honest.job) - 1
    position = step * p.num_ops + _code_at(p, code) + 1
    row, col = element
    bad = patched_trace(honest, position, row, col, delta)
    batch_id, batch, _ = post(system, coordinator, [make_leaf(bad, nodes[0], long_id, system.rollup, job=7)])
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, p.model_header()),
                                {"from": challengers[0]}).return_value
    driver = Driver(system, gid, nodes[0], bad, challengers[0], honest)
    end = driver.play()
    assert (end["hi"], end["row"], end["col"]) == (position, row, col)
    assert end["status"] == CHALLENGER_WON
    assert system.stake.slashable(nodes[0]) == 0
    assert driver.txs[-1].fn_name == "step"
    LONG_GAS["step " + ops.NAMES[code]] = driver.txs[-1].gas_used
    assert driver.txs[-1].gas_used < 5_000_000
    print(f"\nlong context ({step + 1} positions), gas: {LONG_GAS}")
