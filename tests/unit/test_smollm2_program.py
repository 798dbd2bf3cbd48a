"""SmolLM2's decoder program against its fast engine, and the decoder ops' edges.

The program (one position per step, KV caches as tensors) and the engine
(prefill, then cached decoding) must produce the same tokens bit for bit:
a node answers with the engine and defends with the program's trace.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from opinfer.engine.bpe_tokenizer import load_tokenizer
from opinfer.engine.sampling import SamplingParams
from opinfer.engine.smollm2 import default_model
from opinfer.engine.smollm2_program import default_program
from opinfer.errors import CommitmentError
from opinfer.models.smollm2.testing import toy_decoder, toy_decoder_job
from opinfer.semantics import ops
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.program import job_shape
from opinfer.trace.outputs import generation_output, parse_generation
from opinfer.trace.state import Trace


@pytest.fixture(scope="module")
def program():
    return default_program()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _engine(model, job: JobInput, max_ctx: int = 2048):
    sampler = SamplingParams(job.temperature_milli, job.top_p_q, job.seed) if job.temperature_milli else None
    g = model.session(max_ctx).generate(list(job.tokens), job.max_tokens, sampler=sampler,
                                        stop_sequences=job.stop_sequences)
    return generation_output(g.ids, g.finish_reason, job.max_tokens)


def test_template_shape(program):
    assert program.num_ops == 496
    assert program.steps_mode == 1
    codes = {op.code for op in program.ops}
    decoder = set(range(ops.EMBED_TOKEN, ops.GEN + 1))
    assert decoder <= codes
    assert {ops.SCORES, ops.SOFTMAX, ops.CONTEXT, ops.RESIDUAL} <= codes
    assert program.ops[-1].code == ops.GEN


def test_chat_answer_is_the_engines_bit_for_bit(program, tok):
    ids = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    im_end = tok.token_to_id("<|im_end|>")
    job = JobInput(tuple(ids), max_tokens=8, stop_sequences=((im_end,),))
    out = program.run(job)[-1]
    assert np.array_equal(out, _engine(default_model(), job))
    text = tok.decode(parse_generation(out)[0])
    assert "Paris" in text


@pytest.mark.parametrize("temperature,top_p,seed", [(700, 58982, 1), (1500, 65536, 2 ** 64 - 1), (300, 1, 42)])
def test_sampled_tokens_are_the_engines(program, tok, temperature, top_p, seed):
    job = JobInput(tuple(tok.encode("Once upon a time")), max_tokens=5, temperature_milli=temperature,
                   top_p_q=top_p, seed=seed)
    assert np.array_equal(program.run(job)[-1], _engine(default_model(), job))


def test_stop_sequences_end_generation_like_the_engine(program, tok):
    ids = tuple(tok.encode("The capital of France is"))
    free = program.run(JobInput(ids, max_tokens=5))[-1]
    tokens, reason = parse_generation(free)
    assert reason == "length" and len(tokens) == 5
    # a two-token stop sequence taken from the free run's tokens 2..3
    job = JobInput(ids, max_tokens=5, stop_sequences=((9999,), tuple(tokens[1:3])))
    out = program.run(job)[-1]
    assert np.array_equal(out, _engine(default_model(), job))
    assert parse_generation(out) == (tokens[:3], "stop")


@pytest.mark.parametrize("kind", ["greedy", "sample", "stop"])
def test_toy_decoder_program_equals_its_engine(kind):
    program, model = toy_decoder()
    job = toy_decoder_job(kind, tokens=5, max_tokens=4)
    assert np.array_equal(program.run(job)[-1], _engine(model, job, max_ctx=64))


def test_unread_slots_are_marked_in_the_witness():
    program, _ = toy_decoder()
    job = toy_decoder_job("greedy")
    trace = Trace.of(program, job)
    append = next(i for i, op in enumerate(program.ops) if op.code == ops.APPEND)
    not_read = (0).to_bytes(32, "big") + ops.NOT_READ.to_bytes(32, "big")
    # step 0: the cache is only the new row; the previous step's slot is unread
    assert trace.witness(append, 0, 0).startswith(not_read)
    # step 2: row 0 comes from the cache (read), row 2 is new (cache unread)
    at = 2 * program.num_ops + append
    assert not trace.witness(at, 0, 0).startswith(not_read)
    assert trace.witness(at, 2, 0).startswith(not_read)
    # EMBED_TOKEN reads T_0 during the prompt and the previous NEXT after it
    first_generated = len(job.tokens) * program.num_ops
    assert trace.witness(0, 0, 0)[32 * 1:32 * 2] != ops.NOT_READ.to_bytes(32, "big")
    assert trace.witness(first_generated, 0, 0).startswith(not_read)


def test_the_real_program_has_a_bounded_context_and_refuses_what_it_cannot_run(program):
    from opinfer.engine.smollm2_program import MAX_CONTEXT, check_job
    assert program.weights[2].shape == (MAX_CONTEXT, 64)      # the RoPE table: cos | sin (after the Q8_0 codes and scales)
    check_job(JobInput(tuple(range(MAX_CONTEXT)), max_tokens=1))
    for job, problem in ((JobInput(tuple(range(MAX_CONTEXT)), max_tokens=2), "context"),
                         (JobInput((49152, 1), max_tokens=1), "vocabulary"),
                         (JobInput((1, 2), max_tokens=0), "max_tokens"),
                         (JobInput((1, 2), max_tokens=1, temperature_milli=2001), "temperature")):
        with pytest.raises(CommitmentError, match=problem):
            check_job(job)
    # The same limits are in the model root: job_shape refuses exactly what check_job refuses.
    assert program.limits is not None and program.mode_word >> 8
    for job in (JobInput(tuple(range(MAX_CONTEXT)), max_tokens=1), JobInput(tuple(range(MAX_CONTEXT)), max_tokens=2),
                JobInput((49151, 1), max_tokens=3, temperature_milli=2000), JobInput((49152, 1), max_tokens=1),
                JobInput((1, 2), max_tokens=0), JobInput((1, 2), max_tokens=1, temperature_milli=2001),
                JobInput((5,), max_tokens=1, stop_sequences=((49999, 3),))):
        try:
            check_job(job)
            allowed = True
        except CommitmentError:
            allowed = False
        assert job_shape(program.mode_word, program.num_ops, job.to_bytes())[0] == allowed, job


def test_jobs_without_an_honest_trace_are_refused():
    program, _ = toy_decoder()
    with pytest.raises(CommitmentError, match="vocabulary"):
        program.run(JobInput((600, 1), max_tokens=1))
    with pytest.raises(CommitmentError, match="RoPE"):
        program.run(JobInput(tuple(range(60)), max_tokens=10))


ROOT_SCRIPT = """
from opinfer.engine.smollm2_program import default_program
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.state import Trace
p = default_program()
t = Trace.of(p, JobInput((504, 3575, 282), max_tokens=2, temperature_milli=800, seed=7))
print(p.model_root.hex(), t.output_root.hex(), t.state_root(t.n).hex())
"""


def test_model_root_and_trace_are_the_same_in_another_process_with_one_thread(program):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", ROOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    trace = Trace.of(program, JobInput((504, 3575, 282), max_tokens=2, temperature_milli=800, seed=7))
    assert out.stdout.split() == [program.model_root.hex(), trace.output_root.hex(), trace.state_root(trace.n).hex()]
