"""Streaming through the coordinator, `n`, logprobs, /v1/completions and the
API's errors, with the official `openai` package against real nodes over HTTP
(tests/coordinator/conftest.py's network).

A node that dies mid-stream is a real HTTP proxy in front of a real node that
forwards the node's stream and cuts the connection after a few tokens (what a
crashed process looks like to the coordinator)."""

import asyncio
import json
import time

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select

from coordinator import models as m
from coordinator.local import ServerThread
from opinfer.semantics.jobinput import JobInput, choice_seed
from tests.coordinator.conftest import run_coordinator

SMOL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def coord(net, tmp_path_factory):
    running = run_coordinator(net, tmp_path_factory.mktemp("stream") / "c.db")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def oa(coord):
    from coordinator import keys

    with coord.c.sessions() as s, s.begin():   # a key that is sent must be valid, even where keys are optional
        _, secret = keys.create(s, "stream-tests", time.time(), rate_limit_rpm=0)
    return openai.OpenAI(base_url=coord.url + "/v1", api_key=secret, max_retries=0)


async def each(items):
    for item in items:
        yield item


class DyingProxy:
    """Forwards POST /v1/execute to a real node; the first `deaths` streams are
    cut (the connection dropped, no terminating chunk) after `after` token events."""

    def __init__(self, target: str, after: int, deaths: list, stall: bool = False, tamper: bool = False):
        self.target, self.after, self.deaths, self.stall, self.tamper = target, after, deaths, stall, tamper
        self.cut = 0
        app = FastAPI()

        @app.post("/v1/execute")
        async def execute(request: Request):
            body = await request.body()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            client = httpx.AsyncClient(timeout=120)
            resp = await client.send(client.build_request("POST", self.target + "/v1/execute", content=body,
                                                          headers=headers), stream=True)
            die = bool(self.deaths) and self.deaths.pop()
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                data = await resp.aread()
                await client.aclose()
                if resp.status_code != 200:
                    return Response(data, status_code=resp.status_code, media_type="application/json")
                # a node that answers whole: its answer as the protocol's events
                answer = json.loads(data)
                events = [{"type": "token", "index": i, "id": t, "logprob": None, "top": None}
                          for i, t in enumerate(answer["output"]["ids"])] + [{"type": "done", **answer}]
                lines = [f"data: {json.dumps(e)}\n\n" for e in events]
            else:
                lines = None

            async def relay():
                tokens = 0
                try:
                    async for line in (resp.aiter_lines() if lines is None else each(lines)):
                        if die and self.tamper and line.startswith("data:"):
                            event = json.loads(line[5:])
                            if event["type"] == "token" and event["index"] == self.after:
                                self.cut += 1     # streams a token other than the one it signs
                                line = "data: " + json.dumps({**event, "id": (event["id"] + 1) % 49152})
                            yield line if lines is not None and line.endswith("\n") else line + "\n"
                            continue
                        if die and line.startswith("data:") and json.loads(line[5:])["type"] == "token":
                            tokens += 1
                            if tokens > self.after:
                                self.cut += 1
                                if self.stall:     # alive but silent: the connection stays open
                                    await asyncio.sleep(60)
                                raise ConnectionAbortedError("node killed mid-stream")
                        yield line if lines is not None else line + "\n"
                finally:
                    await resp.aclose()
                    await client.aclose()
            return StreamingResponse(relay(), status_code=resp.status_code, media_type="text/event-stream")

        self.server = ServerThread(app).start()


def test_stream_relays_tokens_as_generated(oa, coord):
    kwargs = dict(model=SMOL, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
                  max_tokens=48, temperature=0, extra_body={"opinfer": {"cache": False}})
    for _ in coord.c.pool.nodes:   # warm every node's decoder up (its first job loads it)
        oa.chat.completions.create(**{**kwargs, "max_tokens": 1})
    started = time.perf_counter()
    stamps, text, last = [], "", None
    with oa.chat.completions.with_streaming_response.create(**kwargs, stream=True) as raw:
        job_id = raw.headers["x-opinfer-job-id"]
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter() - started)
                text += chunk.choices[0].delta.content
            last = chunk
    info = last.model_extra["opinfer"]
    assert info["job_id"] == job_id and info["status"] == "pending" and info["signature"].startswith("0x")
    assert last.choices[0].finish_reason == "length" and len(stamps) >= 20
    # tokens arrive as sampled: the first well before the last
    assert stamps[0] < 0.5 * stamps[-1], stamps
    plain = oa.chat.completions.create(**kwargs)
    assert plain.choices[0].message.content == text


def test_node_dying_mid_stream_continues_on_another_node(coord, net, oa):
    pool = coord.c.pool
    deaths = [True]
    proxies = {a: DyingProxy(n.endpoint, 3, deaths) for a, n in pool.nodes.items()}
    saved = {a: n.endpoint for a, n in pool.nodes.items()}
    try:
        for a, n in pool.nodes.items():
            n.endpoint = proxies[a].server.url
        kwargs = dict(model=SMOL, messages=[{"role": "user", "content": "Count from one to twenty."}],
                      max_tokens=24, temperature=0.7, seed=11, extra_body={"opinfer": {"cache": False}})
        with oa.chat.completions.with_streaming_response.create(**kwargs, stream=True) as raw:
            chunks = list(raw.parse())
            job_id = raw.headers["x-opinfer-job-id"]
    finally:
        for a, n in pool.nodes.items():
            n.endpoint = saved[a]
        for p in proxies.values():
            p.server.stop()
    assert sum(p.cut for p in proxies.values()) == 1          # one stream was cut after 3 tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = oa.chat.completions.create(**kwargs)
    assert text == plain.choices[0].message.content           # nothing lost, nothing repeated
    final = chunks[-1].model_extra["opinfer"]
    assert final["job_id"] == job_id
    with coord.c.sessions() as s:
        leaves = s.scalars(select(m.Leaf).where(m.Leaf.job_id == job_id[2:])).all()
    assert [leaf.node for leaf in leaves] == [final["node"]]  # one leaf: the node that finished
    coord.c.post_batches()
    with coord.c.sessions() as s:
        posted = s.scalars(select(m.Leaf).where(m.Leaf.job_id == job_id[2:])).all()
    assert len(posted) == 1 and posted[0].batch_pk is not None


def test_n_choices_are_jobs_with_derived_seeds(oa, coord):
    raw = oa.chat.completions.with_raw_response.create(
        model=SMOL, messages=ASK, max_tokens=8, temperature=1.0, seed=5, n=2, extra_body={"opinfer": {"cache": False}})
    r = raw.parse()
    assert [c.index for c in r.choices] == [0, 1]
    ids = raw.headers["x-opinfer-job-id"].split(",")
    assert len(set(ids)) == 2 and r.model_extra["opinfer"]["job_ids"] == ids
    for i, job_id in enumerate(ids):
        job = httpx.get(f"{coord.url}/v1/jobs/{job_id}").json()
        assert int(job["seed"]) == choice_seed(5, i)
        assert JobInput.from_bytes(bytes.fromhex(job["input"][2:])).seed == choice_seed(5, i)
    assert r.usage.completion_tokens == sum(
        httpx.get(f"{coord.url}/v1/jobs/{i}").json()["usage"]["completion_tokens"] for i in ids)
    # choice 0 is the plain request's job
    one = oa.chat.completions.create(model=SMOL, messages=ASK, max_tokens=8, temperature=1.0, seed=5,
                                             extra_body={"opinfer": {"cache": False}})
    assert one.choices[0].message.content == r.choices[0].message.content
    streamed = list(oa.chat.completions.create(model=SMOL, messages=ASK, max_tokens=8, temperature=1.0,
                                                       seed=5, n=2, stream=True))
    for i in (0, 1):
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i)
        assert text == r.choices[i].message.content


def test_logprobs_in_openai_shape(oa):
    r = oa.chat.completions.create(model=SMOL, messages=ASK, max_tokens=6, temperature=0, logprobs=True,
                                           top_logprobs=3, extra_body={"opinfer": {"cache": False}})
    content = r.choices[0].logprobs.content
    assert content and len(content[0].top_logprobs) == 3
    assert "".join(t.token for t in content).startswith(r.choices[0].message.content[:3])
    for t in content:
        assert t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.logprob == t.top_logprobs[0].logprob      # greedy: the chosen token is the most likely


def test_completions_with_echo_scores_the_prompt(oa):
    text = "The capital of France is"
    r = oa.completions.create(model=SMOL, prompt=text, max_tokens=4, temperature=0, echo=True, logprobs=2)
    choice = r.choices[0]
    assert choice.text.startswith(text) and len(choice.text) > len(text)
    lp = choice.logprobs
    n_prompt = r.usage.prompt_tokens
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert len(lp.tokens) == n_prompt + r.usage.completion_tokens
    assert "".join(lp.tokens[:n_prompt]) == text and lp.text_offset[n_prompt] == len(text)
    scored = oa.completions.create(model=SMOL, prompt=text, max_tokens=1, echo=True, logprobs=0)
    # the prompt's log-probabilities do not depend on what follows it
    assert scored.choices[0].logprobs.token_logprobs[:n_prompt] == lp.token_logprobs[:n_prompt]
    plain = oa.completions.create(model=SMOL, prompt=text, max_tokens=4, temperature=0)
    assert choice.text == text + plain.choices[0].text
    chunks = list(oa.completions.create(model=SMOL, prompt=text, max_tokens=4, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text


def test_omitted_temperature_takes_the_model_default(oa, coord):
    r = oa.chat.completions.create(model=SMOL, messages=ASK, max_tokens=2)
    job = httpx.get(f"{coord.url}/v1/jobs/{r.model_extra['opinfer']['job_id']}").json()
    entry = next(x for x in oa.models.list().data if x.id == SMOL).model_extra
    assert JobInput.from_bytes(bytes.fromhex(job["input"][2:])).temperature_milli == round(
        entry["sampling_defaults"]["temperature"] * 1000) != 1000
    # the model's context (its spec: 4,096 positions) and new tokens (4,095), the coordinator setting none lower
    assert (entry["context_length"], entry["max_completion_tokens"]) == (4096, 4095)
    assert int(entry["pricing"]["prompt"]) > 0


@pytest.mark.parametrize("path,body,status,param", [
    ("chat", dict(n=99), 400, "n"),
    ("chat", dict(n=0), 400, "n"),
    ("chat", dict(response_format={"type": "json_object"}), 400, "response_format"),
    ("chat", dict(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    ("chat", dict(top_logprobs=2), 400, "top_logprobs"),
    ("chat", dict(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("chat", dict(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("chat", dict(max_completion_tokens=100_000), 400, "max_completion_tokens"),
    ("chat", dict(seed=-1), 400, "seed"),
    ("completions", dict(suffix="x"), 400, "suffix"),
    ("completions", dict(max_tokens=0), 400, "max_tokens"),
    ("completions", dict(prompt=""), 400, "prompt"),
    ("completions", dict(prompt=[10**9]), 400, "prompt"),
    ("completions", dict(stream=True, echo=True, logprobs=1), 400, "stream"),
    ("completions", dict(best_of=3), 400, "best_of"),
    ("completions", dict(model="all-minilm-l6-v2"), 400, "model"),
])
def test_bad_requests_are_openai_errors(coord, path, body, status, param):
    base = {"model": SMOL, "max_tokens": 2}
    base.update({"messages": ASK} if path == "chat" else {"prompt": "Hello"})
    url = f"{coord.url}/v1/{'chat/completions' if path == 'chat' else 'completions'}"
    r = httpx.post(url, json={**base, **body}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"


def test_stream_error_before_first_token_is_http_and_after_is_an_event(coord):
    pool = coord.c.pool
    saved = {a: n.endpoint for a, n in pool.nodes.items()}
    try:
        for n in pool.nodes.values():
            n.endpoint = "http://127.0.0.1:9"      # nothing listens: every attempt fails before a token
        r = httpx.post(f"{coord.url}/v1/chat/completions", timeout=60,
                       json={"model": SMOL, "messages": ASK, "max_tokens": 4, "stream": True,
                             "opinfer": {"cache": False}})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_node_available"
    finally:
        for a, n in pool.nodes.items():
            n.endpoint = saved[a]
            n.failures, n.ejected_until = 0, 0.0
    deaths = [True, True, True]                  # every node dies after 2 tokens: the stream cannot go on
    proxies = {a: DyingProxy(n.endpoint, 2, deaths) for a, n in pool.nodes.items()}
    try:
        for a, n in pool.nodes.items():
            n.endpoint = proxies[a].server.url
        with httpx.stream("POST", f"{coord.url}/v1/chat/completions", timeout=60,
                          json={"model": SMOL, "messages": ASK, "max_tokens": 12, "temperature": 0, "stream": True,
                                "opinfer": {"cache": False}}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
            job_id = r.headers["x-opinfer-job-id"]
    finally:
        for a, n in pool.nodes.items():
            n.endpoint = saved[a]
            n.failures, n.ejected_until = 0, 0.0
        for p in proxies.values():
            p.server.stop()
    assert r.status_code == 200 and lines[-1] != "data: [DONE]"
    error = json.loads(lines[-1][5:])["error"]
    assert error["type"] in ("service_unavailable", "server_error") and error["message"]
    with coord.c.sessions() as s:   # a partial answer is never a leaf
        assert s.scalars(select(m.Leaf).where(m.Leaf.job_id == job_id[2:])).all() == []


def test_consensus_stream_relays_one_node_and_ends_when_the_votes_agree(oa):
    kwargs = dict(model=SMOL, messages=ASK, max_tokens=8, temperature=0)
    # first: two nodes sharing one engine in this process decode at once (its native build is locked)
    chunks = list(oa.chat.completions.create(**kwargs, stream=True, extra_body={"opinfer": {"consensus": 2}}))
    plain = oa.chat.completions.create(**kwargs).choices[0].message.content
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1].model_extra["opinfer"]
    assert final["consensus"] == {"k": 2, "agreed": 2} and chunks[-1].choices[0].finish_reason
    assert text == plain


def test_a_node_that_stalls_mid_stream_is_cut_off_and_replaced(net, tmp_path):
    run = run_coordinator(net, tmp_path / "c.db", node_timeout_s=3)
    pool = run.c.pool
    deaths = [True]
    proxies = {a: DyingProxy(n.endpoint, 2, deaths, stall=True) for a, n in pool.nodes.items()}
    try:
        for a, n in pool.nodes.items():
            n.endpoint = proxies[a].server.url
        body = {"model": SMOL, "messages": ASK, "max_tokens": 10, "temperature": 0, "stream": True,
                "opinfer": {"cache": False}}
        started = time.perf_counter()
        with httpx.stream("POST", f"{run.url}/v1/chat/completions", json=body, timeout=120) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        elapsed = time.perf_counter() - started
        for a, n in pool.nodes.items():
            n.endpoint = net.node_servers[[s.url for s in net.node_servers].index(proxies[a].target)].url
        plain = httpx.post(f"{run.url}/v1/chat/completions", timeout=120,
                           json={**body, "stream": False}).json()["choices"][0]["message"]["content"]
    finally:
        for p in proxies.values():
            p.server.stop()
        run.stop()
    assert sum(p.cut for p in proxies.values()) == 1 and lines[-1] == "data: [DONE]"
    text = "".join((json.loads(x[5:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for x in lines[:-1])
    assert text == plain and elapsed < 30      # cut after node_timeout_s (3 s) of silence, not 60 s


def test_a_node_streaming_other_tokens_than_it_signs_ends_the_stream_in_an_error(coord, net):
    pool = coord.c.pool
    saved = {a: n.endpoint for a, n in pool.nodes.items()}
    deaths = [True]
    proxies = {a: DyingProxy(n.endpoint, 1, deaths, tamper=True) for a, n in pool.nodes.items()}
    try:
        for a, n in pool.nodes.items():
            n.endpoint = proxies[a].server.url
        with httpx.stream("POST", f"{coord.url}/v1/chat/completions", timeout=120,
                          json={"model": SMOL, "messages": ASK, "max_tokens": 6, "temperature": 0, "stream": True,
                                "opinfer": {"cache": False}}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
            job_id = r.headers["x-opinfer-job-id"]
        liar = next(a for a, p in proxies.items() if p.cut)
        assert pool.nodes[liar].ejected_until > time.time()     # out of rotation at once
    finally:
        for a, n in pool.nodes.items():
            n.endpoint = saved[a]
            n.failures, n.ejected_until = 0, 0.0
        for p in proxies.values():
            p.server.stop()
    error = json.loads(lines[-1][5:])["error"]
    assert error["code"] == "stream_failed" and "discard" in error["message"]
    with coord.c.sessions() as s:   # the tokens sent cannot be taken back: no leaf is served for them
        assert s.scalars(select(m.Leaf).where(m.Leaf.job_id == job_id[2:])).all() == []


def test_top_logprobs_20_fit_the_answer_bound_derived_from_the_request(net, tmp_path):
    """A node's answer grows with max_tokens x top_logprobs (issue 18: 4,095 tokens with top 20 is
    ~6 MB, past the 256 KiB bound of old). Here the base bound is lowered to 2 KiB, which a short
    job with 20 alternatives per token already passes ~5 times: streamed, plain and echo-scored it
    is answered, because the bound per job is derived from the request (service.answer_bound;
    tests/coordinator/test_coordinator_logic.py proves it covers the longest honest answer)."""
    run = run_coordinator(net, tmp_path / "c.db", max_node_answer_bytes=2048)
    try:
        body = {"model": SMOL, "messages": ASK, "max_tokens": 12, "temperature": 0, "logprobs": True,
                "top_logprobs": 20, "opinfer": {"cache": False}}
        plain = httpx.post(f"{run.url}/v1/chat/completions", json=body, timeout=120)
        assert plain.status_code == 200, plain.text
        content = plain.json()["choices"][0]["logprobs"]["content"]
        assert len(content) >= 4          # (the end-of-turn token is not shown)
        assert all(len(t["top_logprobs"]) == 20 for t in content)
        assert len(json.dumps(content)) > 5 * 2048
        with httpx.stream("POST", f"{run.url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(x[5:]) for x in lines[:-1]]
        streamed = [t for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                    for t in c["choices"][0]["logprobs"]["content"]]
        assert streamed == content
        echo = httpx.post(f"{run.url}/v1/completions", timeout=120,
                          json={"model": SMOL, "prompt": "The capital of France is", "max_tokens": 8,
                                "temperature": 0, "echo": True, "logprobs": 20, "opinfer": {"cache": False}})
        assert echo.status_code == 200, echo.text
        generated = echo.json()["usage"]["completion_tokens"]
        assert all(len(t) == 20 for t in echo.json()["choices"][0]["logprobs"]["top_logprobs"][-generated:])
    finally:
        run.stop()


class LyingProxy:
    """A node that lies consistently: forwards to a real node, then changes the first generated
    token of its answer (streamed events and signed output alike), recomputes the output root and
    signs that leaf with the node's own key: a valid, signed, wrong answer, which only a vote (or a
    challenger) can catch. `streamed`: lie on streamed requests (else on plain ones), the first
    `times` of them."""

    def __init__(self, target: str, key: str, net, streamed: bool, times: list):
        from eth_account import Account

        from opinfer import models
        from opinfer.trace.leaf import ResultLeaf
        from opinfer.trace.outputs import generation_output, tensor_root

        self.target, self.lied = target, 0
        vocab = models.get(SMOL).vocab
        app = FastAPI()

        def lie(answer: dict, data: bytes) -> dict:
            job = JobInput.from_bytes(data)
            ids = list(answer["output"]["ids"])
            ids[0] = (ids[0] + 1) % vocab
            root = tensor_root(generation_output(ids, answer["output"]["finish_reason"], job.max_tokens))
            leaf = ResultLeaf(bytes.fromhex(answer["job_id"][2:]), answer["model_id"],
                              bytes.fromhex(answer["input_root"][2:]), root, Account.from_key(key).address,
                              data).signed(key, net.deployment.chain_id, net.addresses["ResultRollup"])
            self.lied += 1
            return {**answer, "output": {**answer["output"], "ids": ids}, "output_root": "0x" + root.hex(),
                    "signature": "0x" + leaf.signature.hex()}

        @app.post("/v1/execute")
        async def execute(request: Request):
            body = await request.body()
            request_json = json.loads(body)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with httpx.AsyncClient(timeout=120) as client:
                resp = await client.post(self.target + "/v1/execute", content=body, headers=headers)
            lying = bool(request_json.get("stream")) == streamed and bool(times) and times.pop()
            data = bytes.fromhex(request_json["input"][2:])
            if not request_json.get("stream"):
                answer = resp.json()
                return lie(answer, data) if lying and resp.status_code == 200 else \
                    Response(resp.content, status_code=resp.status_code, media_type="application/json")
            events = [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:")]
            if lying:
                done = lie(events[-1], data)
                events = [{**e, "id": done["output"]["ids"][0]} if e["type"] == "token" and e["index"] == 0 else e
                          for e in events[:-1]] + [done]
            return StreamingResponse(each([f"data: {json.dumps(e)}\n\n" for e in events]),
                                     media_type="text/event-stream")

        self.server = ServerThread(app).start()


def test_a_streamed_answer_that_loses_the_consensus_vote_ends_in_an_error_and_is_never_served(coord, net):
    """issue 18: consensus 2 streams one node's tokens. When that node lies (a validly signed wrong
    answer), the other node splits the vote 1:1, a third breaks it against the streamed answer, and the
    stream ends with a `consensus_disagreed` error event: no final chunk, no `opinfer` leaf for the
    losing answer. Its leaf is recorded as a dissent (agrees false), served to nobody, listed in
    /v1/disagreements and posted with the others, so a challenger can prove it and slash the liar.
    When a non-streamed node lies instead, the streamed tokens are the winner's and the stream ends
    normally with the 2-of-3 vote."""
    from eth_account import Account

    pool = coord.c.pool
    saved = {a: n.endpoint for a, n in pool.nodes.items()}
    keys = {Account.from_key(k).address.lower(): k for k in net.node_keys}
    body = {"model": SMOL, "messages": ASK, "max_tokens": 4, "temperature": 0, "stream": True,
            "opinfer": {"cache": False, "consensus": 2}}
    honest = httpx.post(f"{coord.url}/v1/chat/completions", timeout=120,
                        json={**body, "stream": False, "opinfer": {"cache": False}}).json()
    runs = {}
    for streamed in (True, False):
        times = [True]
        proxies = {a: LyingProxy(n.endpoint, keys[a.lower()], net, streamed, times) for a, n in pool.nodes.items()}
        try:
            for a, n in pool.nodes.items():
                n.endpoint = proxies[a].server.url
            with httpx.stream("POST", f"{coord.url}/v1/chat/completions", json=body, timeout=120) as r:
                lines = [line for line in r.iter_lines() if line.startswith("data:")]
                runs[streamed] = (r.headers["x-opinfer-job-id"], lines)
        finally:
            for a, n in pool.nodes.items():
                n.endpoint = saved[a]
            for p in proxies.values():
                p.server.stop()
        assert sum(p.lied for p in proxies.values()) == 1
    job_id, lines = runs[True]
    error = json.loads(lines[-1][5:])["error"]
    assert error["code"] == "consensus_disagreed" and "lost the vote" in error["message"]
    chunks = [json.loads(x[5:]) for x in lines[:-1]]
    assert not any(c["choices"][0]["finish_reason"] for c in chunks)                 # no final chunk
    assert not any("signature" in c.get("opinfer", {}) for c in chunks)              # no leaf served
    job = httpx.get(f"{coord.url}/v1/jobs/{job_id}").json()
    dissent = [leaf for leaf in job["leaves"] if not leaf["agrees"]]
    assert len(job["leaves"]) == 3 and len(dissent) == 1
    assert job["output_root"] == honest["choices"][0]["opinfer"]["output_root"] != dissent[0]["output_root"]
    listed = httpx.get(f"{coord.url}/v1/disagreements").json()["data"]
    assert "0x" + job_id[2:] in [d["job_id"] for d in listed]
    coord.c.post_batches()
    with coord.c.sessions() as s:    # every execution is posted: the liar's leaf can be challenged
        assert all(leaf.batch_pk is not None for leaf in s.scalars(select(m.Leaf).where(m.Leaf.job_id == job_id[2:])))

    job_id, lines = runs[False]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[5:]) for x in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == honest["choices"][0]["message"]["content"]
    final = chunks[-1]["opinfer"]
    assert final["consensus"] == {"k": 3, "agreed": 2}
    assert final["output_root"] == honest["choices"][0]["opinfer"]["output_root"]
