"""StepVerifier's witness slots and dimensions (docs/ops.md, "Decoder ops").

A slot an element does not read is the two words (0, NOT_READ) in the
witness; every op states the rows it wants, NOT_READ included, so a witness
can neither skip a slot that the rule reads nor add one that it does not.
Dimensions are c + a*L + b*s + t*ta + m*M, for the job's L tokens, step s,
tokens_at ta and M = steps + 1 - L tokens to generate.
"""

from __future__ import annotations

import brownie
import numpy as np
import pytest
from eth_abi import encode
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from opinfer.models.smollm2.testing import toy_decoder_job, toy_decoder_program
from opinfer.semantics import merkle, ops
from opinfer.semantics.ops import DOT, INPUT, NOT_READ, WEIGHT, JobCtx, Op, Slot, dim, ref
from opinfer.semantics.program import PER_POSITION, Program, job_steps, value_bytes
from opinfer.semantics.tensor import row_bytes
from opinfer.trace.state import Trace

WRONG_ROW = "StepVerifier: witness reads the wrong row"
NO_VALUE = "DecoderOps: value beyond its row"


def job_word(trace: Trace) -> int:
    job = trace.job
    return len(job.tokens) | job.tokens_at << 32 | job_steps(trace.program.steps_mode, job) << 64


def slot_entry(trace: Trace, op_index: int, slot: int, row: int | None) -> bytes:
    """One slot's witness entry, as Trace.witness writes it (None: NOT_READ)."""
    if row is None:
        return encode(["uint256", "uint256"], [0, NOT_READ])
    p = trace.program
    s = p.ops[op_index % p.num_ops].slots[slot]
    if s.ref >> 128 == WEIGHT:
        w = s.ref & ((1 << 128) - 1)
        tree, proof = p.weight_trees[w], merkle.proof(p.weights_tree, w)
    else:
        t = p.tensor_index(s.ref, op_index)
        tree, proof = trace.trees[t], trace.state_proof(op_index, t)
    row_proof = tree.row_proof(row)
    if s.width < 32:
        e, data = s.width, row_bytes(tree.values[row], s.width)
    else:
        e, data = value_bytes(tree.values[row])
    return (encode(["bytes32", "uint256", "uint256", "uint256"], [tree.root, row, len(proof), len(row_proof)])
            + b"".join(proof) + b"".join(row_proof) + encode(["uint256"], [e]) + data)


def witness(trace: Trace, op_index: int, reads: list[int | None]) -> bytes:
    return b"".join(slot_entry(trace, op_index, i, r) for i, r in enumerate(reads)) + bytes(32)


def compute(system, trace: Trace, op_index: int, row: int, col: int, wit: bytes):
    p = trace.program
    return system.verifier.compute_element(p.model_root, p.num_ops, job_word(trace), op_index,
                                           trace.state_root(op_index), row, col, p.header(op_index), wit)


@pytest.fixture(scope="module")
def toy_trace(program, job_input):
    return Trace.of(program, job_input)


@pytest.fixture(scope="module")
def decoder():
    return toy_decoder_program()


@pytest.fixture(scope="module")
def greedy(decoder):
    return Trace.of(decoder, toy_decoder_job("greedy"))


def test_witness_helper_is_trace_witness(toy_trace, greedy):
    """The helper writes what Trace.witness writes for the rule's own reads."""
    assert witness(toy_trace, 1, [0, 7]) == toy_trace.witness(1, 0, 7)
    p, i = greedy.program, 0
    token = int(greedy.job.tokens[0])
    assert witness(greedy, i, [0, None, token, token]) == greedy.witness(i, 0, 3)


def test_an_unread_slot_where_the_rule_reads_reverts(system, toy_trace):
    op_index, row, col = 1, 0, 7  # DOT: a row 0, W row 7
    assert compute(system, toy_trace, op_index, row, col, witness(toy_trace, op_index, [0, 7])) == \
        int(toy_trace.tensors[op_index + 1][row, col])
    for reads in ([None, 7], [0, None], [None, None]):
        with brownie.reverts(WRONG_ROW):
            compute(system, toy_trace, op_index, row, col, witness(toy_trace, op_index, reads))


def test_an_unread_slot_has_a_zero_root(system, toy_trace):
    wit = witness(toy_trace, 1, [0, None])
    entry = slot_entry(toy_trace, 1, 0, 0)
    bad = entry + encode(["bytes32", "uint256"], [b"\x01" * 32, NOT_READ]) + bytes(32)
    assert len(bad) == len(wit)
    with brownie.reverts("StepVerifier: unread slot with a root"):
        compute(system, toy_trace, 1, 0, 7, bad)


def test_an_unread_slot_is_exactly_two_words(system, toy_trace):
    """Trailing bytes after an unread slot make the witness the wrong length."""
    wit = witness(toy_trace, 1, [0, None])
    with brownie.reverts("StepVerifier: bad witness length"):
        compute(system, toy_trace, 1, 0, 7, wit[:-32] + bytes(32) + bytes(32))


# (template op, step, element, the rule's reads, wrong reads, revert): a decoder
# op must be given exactly the slots its rule reads (L = 4 prompt tokens).
DECODER_CASES = [
    # EMBED_TOKEN in the prompt reads T_0, not the previous NEXT (which at step 0 does not exist),
    # and the token's row of Q8_0 codes and of block scales
    (0, 1, (0, 3), "prompt", [None, None, "t", "t"], NO_VALUE),
    (0, 1, (0, 3), "prompt", [0, 0, "t", "t"], WRONG_ROW),
    (0, 1, (0, 3), "prompt", [0, None, "t", None], NO_VALUE),
    # EMBED_TOKEN after the prompt reads the previous NEXT, not T_0
    (0, 4, (0, 3), "picked", [0, 0, "t", "t"], WRONG_ROW),
    (0, 4, (0, 3), "picked", [None, None, "t", "t"], NO_VALUE),
    # APPEND (K): a cached row reads the previous cache only, the new row the source only
    (4, 3, (1, 9), [1, None], [1, 0], WRONG_ROW),
    (4, 3, (1, 9), [1, None], [None, None], NO_VALUE),
    (4, 3, (3, 9), [None, 0], [2, 0], WRONG_ROW),
    (4, 3, (3, 9), [None, 0], [None, None], NO_VALUE),
    # GEN reads the previous GEN from step 1 on
    (78, 4, (0, 0), [0, 0, 0], [None, 0, 0], NO_VALUE),
    (78, 4, (0, 0), [0, 0, 0], [0, None, 0], WRONG_ROW),   # a copied id does not need next
    # MATCH: at step 3 the first generated token; its previous GEN is read
    (77, 3, (0, 0), [0, 0, 0], [0, None, 0], WRONG_ROW),
    (77, 3, (0, 0), [0, 0, 0], [0, 0, None], NO_VALUE),
    # PENALTY reads its logits row, T_0 and, from step 1 on, the previous GEN (a version-1 job too)
    (35, 3, (1, 5), [1, 0, 0], [1, 0, None], WRONG_ROW),
    (35, 3, (1, 5), [1, 0, 0], [0, 0, 0], WRONG_ROW),
]


NEXT_AT = 76     # the toy decoder's NEXT (template op 76 of 79)


def _reads(trace, op_index, reads):
    """Placeholders: "t" = the token's embedding row, "prompt"/"picked" = the rule's reads."""
    step = op_index // trace.program.num_ops
    token = int(trace.job.tokens[step]) if step < len(trace.job.tokens) else \
        int(trace.tensors[op_index - trace.program.num_ops + NEXT_AT + 1][0, 0])
    if reads == "prompt":
        return [0, None, token, token]
    if reads == "picked":
        return [None, 0, token, token]
    return [token if r == "t" else r for r in reads]


@pytest.mark.parametrize("j,step,element,honest,wrong,error", DECODER_CASES,
                         ids=[f"op{c[0]}-s{c[1]}-{i}" for i, c in enumerate(DECODER_CASES)])
def test_decoder_witness_must_read_exactly_the_rules_slots(system, greedy, j, step, element, honest, wrong, error):
    p = greedy.program
    i = step * p.num_ops + j
    r, c = element
    honest_reads = _reads(greedy, i, honest)
    assert witness(greedy, i, honest_reads) == greedy.witness(i, r, c)
    assert compute(system, greedy, i, r, c, witness(greedy, i, honest_reads)) == int(greedy.tensors[i + 1][r, c])
    with brownie.reverts(error):
        compute(system, greedy, i, r, c, witness(greedy, i, _reads(greedy, i, wrong)))


def test_a_previous_step_slot_read_at_step_0_reverts(system, greedy):
    """At step 0 there is no previous step: EMBED_TOKEN's NEXT slot can only be NOT_READ."""
    p = greedy.program
    token = int(greedy.job.tokens[0])
    # a well-formed entry for the [1, 1] slot: root, row 0, no proofs, e = 1, one value
    fake_prev = encode(["bytes32", "uint256", "uint256", "uint256", "uint256"], [greedy.input_root, 0, 0, 0, 1]) + b"\x05"
    wit = (slot_entry(greedy, 0, 0, 0) + fake_prev + slot_entry(greedy, 0, 2, token) + slot_entry(greedy, 0, 3, token)
           + bytes(32))
    with brownie.reverts("StepVerifier: no previous step"):
        compute(system, greedy, 0, 0, 3, wit)
    assert compute(system, greedy, 0, 0, 3, witness(greedy, 0, [0, None, token, token])) == \
        int(greedy.tensors[1][0, 3])


# ---------------------------------------------------------------- dimensions

def _dim_program(rows: int, cols: int) -> Program:
    op = Op(DOT, rows, cols, (Slot(ref(INPUT), dim(1), dim(1)), Slot(ref(WEIGHT, 0), dim(1), dim(1), 1)), (1, 0, 0, 0))
    return Program([op], [np.zeros((1, 1), dtype=np.int64)], [1], PER_POSITION, "dims")


FIELD = st.integers(0, (1 << 16) - 1)


# Plain hypothesis (brownie's wrapper only adds chain isolation; these are calls, no transactions).
@pytest.mark.filterwarnings("ignore::brownie.exceptions.BrownieTestWarning")
def test_dims_with_tokens_at_and_generated_tokens(system):
    """op_output_shape's dims equal ops.dim_value for random packed dims and jobs,
    M = steps + 1 - L (0 when negative, as for an encoder's one step)."""

    @settings(max_examples=40, deadline=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(rows=st.tuples(FIELD, FIELD, FIELD, FIELD, FIELD), cols=st.tuples(FIELD, FIELD, FIELD, FIELD, FIELD),
           tokens=st.integers(1, 2048), tokens_at=st.integers(10, 2000), steps=st.integers(1, 4096),
           data=st.data())
    def check(rows, cols, tokens, tokens_at, steps, data):
        step = data.draw(st.integers(0, steps - 1))
        program = _dim_program(dim(*rows), dim(*cols))
        job = tokens | tokens_at << 32 | steps << 64
        ctx = JobCtx(tokens=tokens, step=step, tokens_at=tokens_at, gen=max(steps + 1 - tokens, 0))
        got = system.verifier.op_output_shape(program.model_root, 1, job, step, program.header(step))
        assert tuple(got) == (ops.dim_value(dim(*rows), ctx), ops.dim_value(dim(*cols), ctx))

    check()


@pytest.mark.parametrize("field", range(5))
def test_each_dim_field(system, field):
    """One field at a time: c, L, s, ta and M (a decoder job of L = 5, ta = 13, 9 steps: M = 5)."""
    coeffs = [0] * 5
    coeffs[field] = 3
    program = _dim_program(dim(*coeffs), dim(1))
    job = 5 | 13 << 32 | 9 << 64
    step = 7
    expected = 3 * [1, 5, step, 13, 5][field]
    assert tuple(system.verifier.op_output_shape(program.model_root, 1, job, step, program.header(step))) == \
        (expected, 1)
