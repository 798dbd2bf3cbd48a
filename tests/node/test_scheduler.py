"""Continuous batching on the node with the real SmolLM2 engine: a job's tokens and
output root are the ones it gets alone, whatever joins or leaves around it and however
its prompt is chunked (random, seeded arrival patterns); log-probabilities mean what
docs/serving.md says; a failing or cancelled job leaves without disturbing the others."""

import math
import random
import threading
import time

import numpy as np
import pytest

from node.engines import load
from node.scheduler import GenerationFailed, Scheduler
from opinfer.engine.logprobs import prompt_logprobs, token_logprobs
from opinfer.engine.sampling import padded_weights
from opinfer.models.smollm2 import engine as sm
from opinfer.models.smollm2.spec import NAME as SMOLLM2
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.outputs import generation_output, tensor_root

TEXTS = ["The capital of France is", "Once upon a time, in a small village", "1, 2, 3,",
         "def add(a, b):", "Water boils at", "A short one.", "Optimistic verification trusts first and checks later."]


@pytest.fixture(scope="module")
def engine():
    return load(SMOLLM2)


@pytest.fixture(scope="module")
def tok():
    from opinfer.models.smollm2.tokenizer import load_tokenizer

    return load_tokenizer()


def jobs_for(tok, seed: int) -> list[JobInput]:
    rng = random.Random(seed)
    jobs = []
    for k, text in enumerate(TEXTS):
        greedy = rng.random() < 0.4
        stop = (tuple(tok.encode(" 5")),) if text.startswith("1,") else ()
        # some jobs penalised: the penalties count each stream's own tokens, whatever runs beside it
        penalties = dict(presence_q=rng.randrange(-8192, 8193), frequency_q=rng.randrange(-8192, 8193),
                         logit_bias=((rng.randrange(49152), rng.randrange(-25600, 25601)),)) if k % 3 == 1 else {}
        jobs.append(JobInput(tuple(tok.encode(text)), max_tokens=rng.randint(2, 9), stop_sequences=stop,
                             temperature_milli=0 if greedy else rng.choice([300, 700, 1000, 1500]),
                             top_p_q=rng.choice([65536, 50000]), seed=rng.randrange(1 << 64), **penalties))
    return jobs


@pytest.fixture(scope="module")
def alone(engine, tok):
    """Each job run by itself (the engine's one-job path), by arrival seed."""
    cache = {}

    def get(seed):
        if seed not in cache:
            cache[seed] = [engine.run(j)[0] for j in jobs_for(tok, seed)]
        return cache[seed]
    return get


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decoder_random_arrivals_and_chunks_give_each_job_its_own_tokens(engine, tok, alone, seed):
    """Jobs join at random steps, prompts are fed in random chunks, at most a random number
    run at once: every job's output tensor and root equal the job's alone."""
    rng = random.Random(100 + seed)
    jobs = jobs_for(tok, seed)
    dec = sm.Decoder(prefill_tokens=rng.randint(1, 8))
    arrivals = sorted((rng.randint(0, 12), k) for k in range(len(jobs)))
    cap = rng.randint(2, 5)
    streams, steps = {}, 0
    while arrivals or dec.streams:
        while arrivals and arrivals[0][0] <= steps and len(dec.streams) < cap:
            _, k = arrivals.pop(0)
            streams[k] = dec.add(engine.engine.session(len(jobs[k].tokens) + jobs[k].max_tokens),
                                 engine.spec.parts.request(jobs[k]))
        dec.step()
        steps += 1
    want = alone(seed)
    for k, s in streams.items():
        got = generation_output(s.out, s.reason, jobs[k].max_tokens)
        assert np.array_equal(got, want[k]) and tensor_root(got) == tensor_root(want[k]), k


def test_scheduler_threads_arriving_at_random_times(engine, tok, alone):
    """The node's worker with clients submitting from threads at random times (and a
    prefill budget small enough to interleave prompt chunks with running decodes)."""
    jobs = jobs_for(tok, 1)
    sched = Scheduler(engine, max_batch=3, prefill_tokens=4)
    steps = []
    sched.on_step = steps.append
    results = {}
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.4) for _ in jobs]

    def client(k):
        time.sleep(delays[k])
        results[k] = sched.submit(jobs[k]).future.result(60)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    sched.close()
    for k, want in enumerate(alone(1)):
        out, payload = results[k]
        assert np.array_equal(out, want) and "logprobs" not in payload
    assert max(steps) > 1 and max(steps) <= 3      # jobs did run together, never more than max_batch


def test_logprobs_are_the_samplers_temperature_one_distribution(engine, tok):
    prompt = tok.encode("The capital of France is")
    sched = Scheduler(engine, max_batch=4, prefill_tokens=3)
    job = JobInput(tuple(prompt), max_tokens=4, temperature_milli=700, seed=3)
    out, payload = sched.submit(job, logprobs=5, prompt_logprobs=True).future.result(60)
    whole = engine.engine.session(64).forward(prompt, all_logits=True)      # the prompt in one pass
    sched.close()
    # generated tokens: ln(w / W) with the sampler's integer weights at temperature 1
    s = engine.engine.session(64)
    row = s.forward(prompt)
    first = payload["logprobs"][0]
    w = padded_weights(row, 1000)
    assert first["id"] == payload["ids"][0]
    assert math.isclose(first["logprob"], math.log(w[first["id"]] / w.sum()), rel_tol=1e-12)
    top = first["top"]
    assert len(top) == 5 and top[0][0] == int(np.argmax(row))
    assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
    assert sum(math.exp(lp) for _, lp in top) <= 1.0
    for entry, t in zip(payload["logprobs"], payload["ids"]):
        assert entry["id"] == t and entry["logprob"] <= 0
    # prompt tokens: the same numbers however the prompt was chunked (prefill_tokens=3 here)
    assert payload["prompt_logprobs"][0] is None and len(payload["prompt_logprobs"]) == len(prompt)
    assert payload["prompt_logprobs"][1:] == prompt_logprobs(whole, prompt, 0)
    # a token the sampler can never draw at temperature 1 (weight 0) still gets a finite, smaller score
    far = int(np.argmin(row))
    lp_far, _ = token_logprobs(row, far)
    assert w[far] == 0 and math.isfinite(lp_far) and lp_far < math.log(1 / w.sum())


def test_a_failing_job_leaves_and_the_others_keep_their_bits(engine, tok, alone, monkeypatch):
    """The native pass refuses one job's input mid-generation (simulated: the refusal is
    rare on real text): only that job fails, after its tokens so far; the others are intact."""
    jobs = jobs_for(tok, 2)
    bad = JobInput(tuple(tok.encode("This one fails after two tokens")), max_tokens=50)   # a unique context size
    real = sm.forward_many

    def refusing(sessions, batch, all_logits=False):
        if any(getattr(s, "bad", False) and s.pos >= len(bad.tokens) + 1 for s in sessions):
            raise ValueError("the native forward refused its input (a gate outside the SiLU table)")
        return real(sessions, batch, all_logits)

    from opinfer.models.llama import engine as family     # the Decoder's own module (smollm2.engine re-exports it)

    monkeypatch.setattr(family, "forward_many", refusing)
    session = engine.engine.session

    def marked(max_ctx=2048):
        s = session(max_ctx)
        s.bad = max_ctx == len(bad.tokens) + bad.max_tokens
        return s

    monkeypatch.setattr(engine.engine, "session", marked)
    sched = Scheduler(engine, max_batch=8, prefill_tokens=None)
    seen = []
    tickets = [sched.submit(j) for j in jobs[:3]]
    failing = sched.submit(bad, on_token=lambda i, t, lp, top: seen.append(t))
    with pytest.raises(GenerationFailed, match="at token 2: the native forward refused"):
        failing.future.result(60)
    assert len(seen) == 2
    for t, want in zip(tickets, alone(2)):
        assert np.array_equal(t.future.result(60)[0], want)
    sched.close()


def test_a_cancelled_job_leaves_at_the_next_step(engine, tok, alone):
    jobs = jobs_for(tok, 3)
    sched = Scheduler(engine, max_batch=4)
    long = JobInput(tuple(tok.encode("Tell me a long story")), max_tokens=200)
    ticket = sched.submit(long, on_token=lambda i, *_: ticket.cancel() if i == 2 else None)
    others = [sched.submit(j) for j in jobs[:2]]
    with pytest.raises(GenerationFailed, match="cancelled"):
        ticket.future.result(60)
    assert len(ticket.stream.out) <= 4 and ticket.stream not in sched.decoder.streams
    for t, want in zip(others, alone(3)):
        assert np.array_equal(t.future.result(60)[0], want)
    sched.close()
