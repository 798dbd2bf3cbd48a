"""A decoder trace built in blocks of positions (opinfer/trace/blocked.py) is the trace
built step by step, bit for bit: every tensor root, state root, proof and witness; with
the engine's tokens as the hint, with none, and with a wrong one (which the build
catches and recomputes from); for the toy decoder and the real SmolLM2 on a short job,
at steps inside its first, a middle and its last position. A trace saved for a restart
keeps none of its caches and answers the same."""

import io
import pickle

import numpy as np
import pytest

from opinfer.models.smollm2.testing import toy_decoder, toy_decoder_job
from opinfer.semantics.jobinput import JobInput
from opinfer.trace import blocked
from opinfer.trace.decoder_trace import DecoderTrace
from opinfer.trace.hints import generated_tokens
from opinfer.trace.state import Trace


def step_by_step(program, job):
    return DecoderTrace(program, job, on_op=lambda i, out: out)     # on_op: never blocked


def same_answers(fast, slow, steps=None):
    """Roots, state roots and proofs, tensors and witnesses at ops inside the first,
    a middle and the last position."""
    p = fast.program
    assert fast._state_leaves == slow._state_leaves
    last = fast.steps - 1
    for step in steps or (0, fast.steps // 2, last):
        for j in (0, p.num_ops // 3, p.num_ops - 1):
            i = step * p.num_ops + j
            out = slow.tensors[i + 1]
            assert np.array_equal(fast.tensors[i + 1], out)
            for r, c in {(0, 0), (out.shape[0] - 1, out.shape[1] - 1)}:
                assert fast.witness(i, r, c) == slow.witness(i, r, c)
            assert fast.state_root(i) == slow.state_root(i)
            assert fast.state_proof(i, i // 2) == slow.state_proof(i, i // 2)


@pytest.mark.parametrize("kind", ["sample", "stop", "penalty"])
def test_toy_blocks_with_and_without_hints(kind):
    program, _ = toy_decoder()
    job = toy_decoder_job(kind, tokens=20, max_tokens=7)
    eager = Trace(program, job, program.run(job))
    hint = generated_tokens(program, job)
    assert hint and len(hint) == job.max_tokens - 1
    wrong = [(t + 1) % 512 for t in hint]
    for tokens, size in ((hint, 4), (hint, 64), ([], 5), (wrong, 64), (hint[:2] + wrong[2:], 3)):
        built = blocked.build(program, job, tokens, size)
        assert [bytes(x) for x in built.leaves] == list(eager._state_leaves), (tokens, size)
    assert blocked.build(program, job, hint, 64).hint_steps == job.max_tokens - 1 + len(job.tokens)


@pytest.fixture(scope="module")
def smollm2():
    from opinfer.models.smollm2.program import default_program

    program = default_program()
    ids = [int(t) for t in np.random.default_rng(5).integers(0, 49152, size=21)]
    job = JobInput(tuple(ids), max_tokens=6, temperature_milli=700, top_p_q=50000, seed=11, presence_q=2048)
    return program, job, step_by_step(program, job)


def test_smollm2_blocked_trace_is_the_step_by_step_trace(smollm2):
    program, job, slow = smollm2
    fast = Trace.of(program, job)
    assert isinstance(fast, DecoderTrace) and fast.output_root == slow.output_root
    same_answers(fast, slow)


def test_smollm2_wrong_hint_costs_time_not_roots(smollm2):
    program, job, slow = smollm2
    hint = generated_tokens(program, job)
    bad = DecoderTrace(program, job, tokens=hint[:1] + [(t + 7) % 49152 for t in hint[1:]])
    same_answers(bad, slow, steps=(len(job.tokens) + 1, bad.steps - 1))


def test_saved_trace_is_small_and_answers_the_same(smollm2):
    program, job, slow = smollm2
    fast = Trace.of(program, job)
    fast.witness(3, 0, 0)                          # fills the replay and tree caches

    class Pickler(pickle.Pickler):                 # as node/defender.TraceFiles: the program by reference
        def persistent_id(self, obj):
            return "program" if obj is program else None

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return program

    buf = io.BytesIO()
    Pickler(buf, protocol=5).dump(fast)
    assert len(buf.getvalue()) < 1_000_000 + fast.n * 40     # the roots (32 bytes each), the caches' rows
    back = Unpickler(io.BytesIO(buf.getvalue())).load()
    same_answers(back, slow, steps=(fast.steps - 1,))
