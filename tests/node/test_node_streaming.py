"""POST /v1/execute with "stream": true against a real node app served by uvicorn
(real HTTP, the real SmolLM2 engine): tokens arrive as they are sampled, the signed
answer comes with "done" and equals the non-stream answer; errors before the first
token keep their status codes, an error mid-generation is an error event and nothing
is signed; a stream started while another runs does not wait for it."""

import json
import threading
import time

import httpx
import pytest
import uvicorn

from node.app import Node, create_app
from node.auth import Authenticator
from node.engines import ProgramEngine, load
from opinfer.chain.anvil import dev_keys, free_port
from opinfer.models.smollm2.spec import NAME as SMOLLM2
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.testing import toy_job, toy_program

KEY, = dev_keys(1)
ROLLUP = "0x" + "11" * 20
H = {"authorization": "Bearer tok"}


@pytest.fixture(scope="module")
def tok():
    from opinfer.models.smollm2.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def server():
    toy = toy_program()
    node = Node(KEY, 31337, ROLLUP, {SMOLLM2: 2, toy.name: 3},
                engines_by_name={SMOLLM2: load(SMOLLM2), toy.name: ProgramEngine(toy)}, prefill_tokens=16)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(node=node, auth=Authenticator("tok")), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", node
    srv.should_exit = True
    thread.join(30)


def body(tok, text: str, max_tokens: int, job_id: int = 1, **extra) -> dict:
    job = JobInput(tuple(tok.encode(text)), max_tokens=max_tokens)
    return {"job_id": "0x" + job_id.to_bytes(16, "big").hex(), "model": SMOLLM2, "model_id": 2,
            "input": "0x" + job.to_bytes().hex(), **extra}


def events(url: str, payload: dict) -> list[tuple[float, dict]]:
    """(arrival time, event) of every SSE event of one streamed request."""
    out = []
    with httpx.stream("POST", url + "/v1/execute", json=payload, headers=H, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append((time.perf_counter(), json.loads(line[6:])))
            else:
                assert line == ""
    return out


def test_tokens_arrive_as_sampled_and_done_is_the_signed_answer(server, tok):
    url, node = server
    plain = httpx.post(url + "/v1/execute", json=body(tok, "Once upon a time", 24, logprobs=2), headers=H,
                       timeout=120).json()
    started = time.perf_counter()
    got = events(url, body(tok, "Once upon a time", 24, stream=True, logprobs=2))
    tokens, (t_done, done) = [e for _, e in got[:-1]], got[-1]
    assert done["type"] == "done" and [e["type"] for e in tokens] == ["token"] * 24
    assert [e["index"] for e in tokens] == list(range(24))
    assert [e["id"] for e in tokens] == done["output"]["ids"] == plain["output"]["ids"]
    assert [[e["logprob"], e["top"]] for e in tokens] == [[x["logprob"], x["top"]] for x in done["output"]["logprobs"]]
    # the signed leaf is the non-stream one (same job id, same output: the same signature)
    assert {k: v for k, v in done.items() if k not in ("type", "engine_ms")} == \
        {k: v for k, v in plain.items() if k != "engine_ms"}
    # streamed: the first token well before the last (24 decode steps apart)
    first, last = got[0][0] - started, got[-2][0] - started
    assert first < last / 3, (first, last)


def test_a_stream_does_not_wait_for_a_running_one(server, tok):
    url, _ = server
    times = {}

    def run(name, payload):
        times[name] = events(url, payload)

    # long enough to be decoding for seconds whatever the machine (60 tokens took < 1 s idle)
    long = threading.Thread(target=run, args=("long", body(tok, "Tell me a long story", 400, 2, stream=True)))
    long.start()
    time.sleep(0.6)                       # the long job is decoding
    run("short", body(tok, "Hi", 3, 3, stream=True))
    long.join(300)
    assert times["short"][-1][1]["type"] == "done" and times["long"][-1][1]["type"] == "done"
    # the short job joined the running batch and finished while the long one was still generating:
    # the long stream had many tokens still to come when the short one was done
    short_done = times["short"][-1][0]
    later = [t for t, e in times["long"] if e["type"] == "token" and t > short_done]
    assert len(later) >= 20, (len(later), len(times["long"]))


def test_errors_before_the_first_token_keep_status_codes(server, tok):
    url, _ = server
    ok = body(tok, "Hello", 2, 4, stream=True)
    for payload, status, words in (({**ok, "model_id": 9}, 400, "does not serve"),
                                   ({**ok, "logprobs": 21}, 400, "logprobs"),
                                   ({**ok, "input": "0x0102"}, 400, "malformed job input"),
                                   (body(tok, "Hello", 5000, 5, stream=True), 400, "max_tokens")):
        r = httpx.post(url + "/v1/execute", json=payload, headers=H, timeout=60)
        assert r.status_code == status and words in r.json()["error"]["message"], (r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
    assert httpx.post(url + "/v1/execute", json=ok, timeout=60).status_code == 401
    toy = toy_program()
    r = httpx.post(url + "/v1/execute", headers=H, timeout=60,
                   json={"job_id": "0x" + "ee" * 16, "model": toy.name, "model_id": 3, "logprobs": 1,
                         "input": "0x" + toy_job(1).to_bytes().hex()})
    assert r.status_code == 400 and "chat jobs only" in r.json()["error"]["message"]
    # a non-chat job streams its "done" alone
    got = events(url, {"job_id": "0x" + "ef" * 16, "model": toy.name, "model_id": 3, "stream": True,
                       "input": "0x" + toy_job(1).to_bytes().hex()})
    assert [e["type"] for _, e in got] == ["done"] and got[0][1]["signature"].startswith("0x")


def test_an_error_mid_generation_is_an_error_event_and_nothing_is_signed(server, tok, monkeypatch):
    url, node = server
    engine = node.engines[SMOLLM2]
    parts = engine.spec.parts
    real = parts.result

    def broken(job, ids, reason):   # the output cannot be committed (simulated engine failure)
        if len(ids) == 5:
            raise RuntimeError("engine fault")
        return real(job, ids, reason)

    monkeypatch.setattr(parts, "result", broken)
    before = node.metrics.jobs.labels(SMOLLM2, "error")._value.get()
    got = events(url, body(tok, "Count: one, two,", 5, 6, stream=True))
    assert [e["type"] for _, e in got] == ["token"] * 5 + ["error"]
    assert got[-1][1]["error"] == {"message": "the engine failed: engine fault", "type": "GenerationFailed"}
    assert node.metrics.jobs.labels(SMOLLM2, "error")._value.get() == before + 1
    r = httpx.post(url + "/v1/execute", json=body(tok, "Count: one, two,", 5, 7), headers=H, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["type"] == "GenerationFailed"


def test_a_client_that_goes_away_cancels_its_job(server, tok):
    """The job leaves the decode batch at the next step and nothing is signed for it."""
    url, node = server
    ok_before = node.metrics.jobs.labels(SMOLLM2, "ok")._value.get()
    cancelled = node.metrics.jobs.labels(SMOLLM2, "cancelled")._value.get()
    with httpx.stream("POST", url + "/v1/execute", json=body(tok, "Tell me a very long story", 300, 8, stream=True),
                      headers=H, timeout=60) as r:
        lines = r.iter_lines()
        assert json.loads(next(line for line in lines if line.startswith("data: "))[6:])["type"] == "token"
    deadline = time.time() + 20            # the connection is closed: the job must leave long before 300 tokens
    while node.running and time.time() < deadline:
        time.sleep(0.05)
    assert node.running == 0
    assert node.metrics.jobs.labels(SMOLLM2, "cancelled")._value.get() == cancelled + 1   # left, not finished
    assert node.metrics.jobs.labels(SMOLLM2, "ok")._value.get() == ok_before
