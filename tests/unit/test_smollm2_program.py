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

from opinfer.models.smollm2.tokenizer import load_tokenizer
from opinfer.engine.sampling import SamplingParams
from opinfer.models.smollm2.engine import default_model
from opinfer.models.smollm2.program import default_program
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
    sampler = SamplingParams.of_job(job)
    g = model.session(max_ctx).generate(list(job.tokens), job.max_tokens, sampler=sampler,
                                        stop_sequences=job.stop_sequences)
    return generation_output(g.ids, g.finish_reason, job.max_tokens)


def test_template_shape(program):
    assert program.num_ops == 527
    assert program.steps_mode == 1
    codes = {op.code for op in program.ops}
    decoder = set(range(ops.EMBED_TOKEN, ops.GEN + 1)) | {ops.PENALTY}
    assert decoder <= codes
    # the attention softmax in chunks (EXP_SUMS, PROBS): no whole-row SOFTMAX over the context
    assert {ops.SCORES, ops.EXP_SUMS, ops.PROBS, ops.CONTEXT, ops.RESIDUAL} <= codes and ops.SOFTMAX not in codes
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


@pytest.mark.parametrize("sampled", [False, True])
def test_penalised_jobs_are_the_engines_bit_for_bit(program, tok, sampled):
    """Presence/frequency penalties and logit bias (a version-2 job input): the
    program's PENALTY op and the engine's sampling.choose give the same tokens,
    and the penalties change them."""
    ids = tuple(tok.encode("one one one one one"))
    base = dict(max_tokens=5, temperature_milli=900 if sampled else 0, top_p_q=60000, seed=3)
    free = program.run(JobInput(ids, **base))[-1]
    bias = tok.encode(" two")[0]
    job = JobInput(ids, presence_q=4096, frequency_q=8192, logit_bias=((bias, 25600 if sampled else 1280),), **base)
    out = program.run(job)[-1]
    assert np.array_equal(out, _engine(default_model(), job))
    assert not np.array_equal(out, free)
    tokens, _ = parse_generation(out)
    if sampled:   # +100 outweighs the penalties of up to 4 repeats (1.0 + 4 x 2.0)
        assert tokens == [bias] * 5


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


@pytest.mark.parametrize("kind", ["greedy", "sample", "stop", "penalty"])
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
    from opinfer.models.smollm2.program import MAX_CONTEXT, MAX_NEW, check_job
    assert MAX_CONTEXT == 4096 and MAX_NEW == 4095
    assert program.weights[2].shape == (MAX_CONTEXT, 64)      # the RoPE table: cos | sin (after the Q8_0 codes and scales)
    # the longest prompt fits one job-input row (2,048 words: 10 header words + 2,038 tokens);
    # prompt + max_tokens - 1 positions up to MAX_CONTEXT, max_tokens up to MAX_NEW
    longest = tuple(range(2038))
    check_job(JobInput(longest, max_tokens=MAX_CONTEXT + 1 - len(longest)))
    check_job(JobInput((7,), max_tokens=MAX_NEW))
    for job, problem in ((JobInput(longest, max_tokens=MAX_CONTEXT + 2 - len(longest)), "context"),
                         (JobInput((7,), max_tokens=MAX_NEW + 1), "max_tokens"),
                         (JobInput((49152, 1), max_tokens=1), "vocabulary"),
                         (JobInput((1, 2), max_tokens=0), "max_tokens"),
                         (JobInput((1, 2), max_tokens=1, temperature_milli=2001), "temperature")):
        with pytest.raises(CommitmentError, match=problem):
            check_job(job)
    with pytest.raises(CommitmentError, match="too long"):
        JobInput(tuple(range(2039)), max_tokens=1)
    # The same limits are in the model root: job_shape refuses exactly what check_job refuses.
    assert program.limits is not None and program.mode_word >> 8
    for job in (JobInput(longest, max_tokens=MAX_CONTEXT + 1 - len(longest)),
                JobInput(longest, max_tokens=MAX_CONTEXT + 2 - len(longest)),
                JobInput((7,), max_tokens=MAX_NEW), JobInput((7,), max_tokens=MAX_NEW + 1),
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
from opinfer.models.smollm2.program import default_program
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


def test_long_context_job_program_equals_its_engine():
    """A sampled job past 1,024 positions (1,032): the attention softmax spans
    five chunks of 256 (EXP_SUMS, PROBS); the program's tokens are the engine's
    (SmolLM2 cut to one block and 256 tokens, real weights)."""
    from opinfer.models.smollm2.testing import long_toy_decoder, long_toy_job

    program, model = long_toy_decoder()
    job = long_toy_job()
    assert len(job.tokens) + job.max_tokens - 1 > 1024
    tensors = program.run(job)
    assert np.array_equal(tensors[-1], _engine(model, job))
    last = (len(tensors) - 2) // program.num_ops           # the last step's EXP_SUMS: chunk 4 holds positions 1,024..
    sums = tensors[1 + last * program.num_ops + next(j for j, op in enumerate(program.ops) if op.code == ops.EXP_SUMS)]
    assert sums.shape == (9, 16) and (sums[:, :5] > 0).all() and not sums[:, 5:].any()


def test_real_program_step_past_1024_positions_equals_the_engine(program, tok):
    """The real SmolLM2 at position 1,100: the program's step, fed the engine's own
    KV cache of the 1,100 positions before it, gives the engine's logits and token
    bit for bit (a full 1,100-position trace would take minutes)."""
    model = default_model()
    text = "The history of the city begins with a small fishing village on the river. " * 80
    ids = tuple(tok.encode(text))[:1101]
    assert len(ids) == 1101
    job = JobInput(ids, max_tokens=1)
    s = len(ids) - 1                                          # the last prompt step: 1,101 positions
    session = model.session(2048)
    session.forward(ids[:s])
    logits = session.forward(ids[s:])
    carry, layer = {}, 0
    gen = next(j for j, op in enumerate(program.ops) if op.code == ops.GEN)
    for j, op in enumerate(program.ops):
        if op.code == ops.APPEND:
            k, v = session.k[layer // 2, :, :s].astype(np.int64), session.v[layer // 2, :, :s].astype(np.int64)
            carry[j] = v.transpose(0, 2, 1).reshape(-1, s) if op.params[0] else k.transpose(1, 0, 2).reshape(s, -1)
            layer += 1
        elif op.code == ops.NEXT:
            carry[j] = np.array([[ids[s]]])
    carry[gen] = np.array([[-1, 0]])
    outs = program.run_step(job, s, carry)
    head = max(j for j, op in enumerate(program.ops) if op.code == ops.DENSE_BLOCK)
    assert np.array_equal(outs[head].reshape(-1), logits)
    assert outs[-1][0, 0] == int(np.argmax(logits))
    sums = outs[next(j for j, op in enumerate(program.ops) if op.code == ops.EXP_SUMS)]
    assert (sums[:, :5] > 0).all() and not sums[:, 5:].any()  # positions 0..1,100: five chunks of 256
