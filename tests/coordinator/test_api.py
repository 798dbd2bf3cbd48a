"""The OpenAI-compatible API through the official `openai` package, against
real nodes over HTTP and a real chain."""

import json

import httpx
import numpy as np
import openai
import pytest

from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.engine import IntMiniLM, to_float

MINILM, SMOL = "all-minilm-l6-v2", "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(coord):
    import time

    from coordinator import keys

    with coord.c.sessions() as s, s.begin():   # a key that is sent must be valid, even where keys are optional
        _, secret = keys.create(s, "openai-client", time.time(), rate_limit_rpm=0)
    return openai.OpenAI(base_url=coord.url + "/v1", api_key=secret, max_retries=0)


def test_models_lists_registry_models_with_roots(client, coord, net):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {MINILM, SMOL}
    extra = models[MINILM].model_extra["opinfer"]
    root = net.deployment.contracts["ModelRegistry"].functions.get_model(net.models[MINILM]).call()[0]
    assert extra["model_root"] == "0x" + bytes(root).hex() and extra["nodes"] == 3
    assert client.models.retrieve(SMOL).id == SMOL


def test_embeddings_equal_the_engine_and_carry_the_job(client, coord):
    texts = ["The cat sat on the mat.", "Proofs make fraud expensive."]
    raw = client.embeddings.with_raw_response.create(model=MINILM, input=texts)
    resp = raw.parse()  # the openai package asks for base64 and decodes it
    ids = raw.headers["x-opinfer-job-id"].split(",")
    assert len(resp.data) == 2 and len(ids) == 2
    model = IntMiniLM.build()
    for text, item in zip(texts, resp.data):
        expected = to_float(model.forward(fw.encode(text)))
        assert np.allclose(item.embedding, expected, atol=1e-6)
    assert resp.usage.prompt_tokens == sum(len(fw.encode(t)) for t in texts)
    job = httpx.get(f"{coord.url}/v1/jobs/{ids[0]}").json()
    assert job["status"] == "pending" and job["kind"] == "embedding" and job["result"]["embedding"]


def test_float_encoding_and_token_input(coord):
    ids = [int(i) for i in fw.encode("Same bits either way.")]
    a = httpx.post(f"{coord.url}/v1/embeddings", json={"model": MINILM, "input": "Same bits either way.",
                                                       "encoding_format": "float"}).json()
    b = httpx.post(f"{coord.url}/v1/embeddings", json={"model": MINILM, "input": ids}).json()
    assert a["data"][0]["embedding"] == b["data"][0]["embedding"]
    # Same job input, so the second is an exact cache hit of the first job.
    assert b["opinfer"]["cached"] and b["opinfer"]["job_id"] == a["opinfer"]["job_id"]


def test_chat_completion_greedy_is_deterministic(client, coord):
    kwargs = dict(model=SMOL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                  max_tokens=8, temperature=0)
    raw = client.chat.completions.with_raw_response.create(**kwargs, extra_body={"opinfer": {"cache": False}})
    first = raw.parse()
    again = client.chat.completions.create(**kwargs, extra_body={"opinfer": {"cache": False}})
    assert first.choices[0].message.content == again.choices[0].message.content
    assert "Paris" in first.choices[0].message.content
    assert first.choices[0].finish_reason in ("stop", "length")
    assert first.usage.completion_tokens <= 8 and first.usage.prompt_tokens > 10
    info = first.model_extra["opinfer"]
    assert raw.headers["x-opinfer-job-id"] == info["job_id"] and info["status"] == "pending"
    assert info["job_id"] != again.model_extra["opinfer"]["job_id"]
    assert info["output_root"] == again.model_extra["opinfer"]["output_root"]


def test_chat_stream_matches_the_plain_answer(client):
    kwargs = dict(model=SMOL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, temperature=0)
    plain = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason


def test_stream_ends_with_done(coord):
    body = {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", f"{coord.url}/v1/chat/completions", json=body, timeout=120) as r:
        lines = [line for line in r.iter_lines() if line]
        assert r.headers["content-type"].startswith("text/event-stream") and r.headers["x-opinfer-job-id"]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["opinfer"]["job_id"] == r.headers["x-opinfer-job-id"]


def test_sampling_without_seed_records_one(client, coord):
    kwargs = dict(model=SMOL, messages=[{"role": "user", "content": "Tell me a word."}], max_tokens=4,
                  temperature=0.9)
    resp = client.chat.completions.create(**kwargs)
    seed = int(resp.model_extra["opinfer"]["seed"])
    job = httpx.get(f"{coord.url}/v1/jobs/{resp.model_extra['opinfer']['job_id']}").json()
    assert job["seed"] == str(seed)
    replay = client.chat.completions.create(**kwargs, seed=seed, extra_body={"opinfer": {"cache": False}})
    assert replay.choices[0].message.content == resp.choices[0].message.content
    assert replay.model_extra["opinfer"]["output_root"] == resp.model_extra["opinfer"]["output_root"]


def test_penalties_and_logit_bias_are_part_of_the_job(client, coord):
    """presence_penalty, frequency_penalty and logit_bias go into the job input
    (version 2), change the answer as OpenAI's rule says, and the answer is the
    engine's on that job input alone (what a challenger re-executes)."""
    from opinfer.models.smollm2.tokenizer import load_tokenizer
    from opinfer.engine.sampling import SamplingParams
    from opinfer.models.smollm2.engine import default_model
    from opinfer.semantics.jobinput import JobInput

    tok = load_tokenizer()
    paris = sorted({tok.encode(w)[0] for w in ("Paris", " Paris")})
    kwargs = dict(model=SMOL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                  max_tokens=8, temperature=0, extra_body={"opinfer": {"cache": False}})
    assert "Paris" in client.chat.completions.create(**kwargs).choices[0].message.content
    resp = client.chat.completions.create(**kwargs, presence_penalty=0.5, frequency_penalty=1.25,
                                          logit_bias={str(t): -100 for t in paris})
    assert "Paris" not in resp.choices[0].message.content
    job = httpx.get(f"{coord.url}/v1/jobs/{resp.model_extra['opinfer']['job_id']}").json()
    ji = JobInput.from_bytes(bytes.fromhex(job["input"].removeprefix("0x")))
    assert ji.version == 2 and (ji.presence_q, ji.frequency_q) == (2048, 5120)
    assert ji.logit_bias == tuple((t, -25600) for t in paris)
    g = default_model().session().generate(list(ji.tokens), ji.max_tokens, sampler=SamplingParams.of_job(ji),
                                           stop_sequences=ji.stop_sequences)
    assert job["result"]["ids"] == g.ids


@pytest.mark.parametrize("kwargs,status,param", [
    (dict(presence_penalty=2.5), 400, "presence_penalty"),
    (dict(frequency_penalty=-3), 400, "frequency_penalty"),
    (dict(logit_bias={"49152": 1}), 400, "logit_bias"),
    (dict(logit_bias={"7": 101}), 400, "logit_bias"),
    (dict(logit_bias={str(t): 1 for t in range(301)}), 400, "logit_bias"),
    (dict(model="gpt-4o"), 404, "model"),
    (dict(model=MINILM), 400, "model"),
    (dict(max_tokens=100_000), 400, "max_tokens"),
    (dict(n=9), 400, "n"),
    (dict(max_tokens=4096), 400, "max_tokens"),          # SmolLM2's spec: at most 4,095 new tokens
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    (dict(temperature=3), 400, "temperature"),
    (dict(extra_body={"opinfer": {"consensus": 9}}), 400, "opinfer.consensus"),
])
def test_openai_errors(client, kwargs, status, param):
    base = dict(model=SMOL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(**{**base, **kwargs})
    assert exc.value.status_code == status
    assert exc.value.body["param"] == param and exc.value.body["message"]


def test_max_tokens_up_to_the_remaining_context(client):
    """max_tokens is no longer capped at 256: up to the model's remaining context (SmolLM2:
    prompt + max_tokens <= 4,097); the answer ends on the chat's end token long before."""
    resp = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Say hello."}],
                                          max_tokens=4000, temperature=0)
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.content


def test_malformed_and_oversized_bodies(coord):
    url = f"{coord.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url, json={"model": SMOL, "messages": [], "bogus": 1})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, content=b"x" * 1_000_001, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]
    long = "word " * 5000                   # past the 4,096-position context
    r = httpx.post(url, json={"model": SMOL, "messages": [{"role": "user", "content": long}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    long = "word " * 3000                   # within the context, past the 2,048-word job input
    r = httpx.post(url, json={"model": SMOL, "messages": [{"role": "user", "content": long}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "job input" in r.json()["error"]["message"]
    r = httpx.post(f"{coord.url}/v1/embeddings", json={"model": MINILM, "input": ["a"] * 65})
    assert r.status_code == 400 and "max_embedding_inputs" in r.json()["error"]["message"]
    r = httpx.get(f"{coord.url}/v1/jobs/0x" + "ab" * 16)
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = httpx.get(f"{coord.url}/v1/batches/99999999999999999999999")
    assert r.status_code == 400


def test_healthz_metrics_and_usage(coord):
    health = httpx.get(f"{coord.url}/healthz").json()
    assert health["status"] == "ok" and health["nodes_in_rotation"] == 3
    text = httpx.get(f"{coord.url}/metrics").text
    assert 'opinfer_request_seconds_count{route="/v1/chat/completions",status="200"}' in text
    assert "opinfer_node_seconds_bucket" in text
    # usage is per API key: an anonymous caller would see every anonymous caller's traffic
    r = httpx.get(f"{coord.url}/v1/usage")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
