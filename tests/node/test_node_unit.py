"""The node without a chain: authentication, batching (bit for bit the same
as one job at a time, also with the real MiniLM), the HTTP errors."""

import threading
import time

import numpy as np
from fastapi.testclient import TestClient

from node.app import Node, create_app
from node.auth import Authenticator, AuthError, sign_request
from node.batching import Batcher
from node.engines import ProgramEngine
from opinfer.chain.anvil import dev_keys
from opinfer.trace.testing import toy_job, toy_program

KEY, COORD, OTHER = dev_keys(3)
ROLLUP = "0x" + "11" * 20


def test_authenticator_token_and_signed_requests():
    from eth_account import Account

    coord = Account.from_key(COORD).address
    me, peer = Account.from_key(KEY).address, Account.from_key(OTHER).address
    auth = Authenticator("tok", [coord], clock=lambda: 1000, address=me)
    assert auth.check({"authorization": "Bearer tok"}, b"x") == "token"
    for headers, status in (({}, 401), ({"authorization": "Bearer bad"}, 401),
                            (sign_request(OTHER, b"body", me, ts=1000), 403),
                            (sign_request(COORD, b"body", me, ts=900), 401),       # stale
                            (sign_request(COORD, b"other", me, ts=1000), 401),     # another body
                            (sign_request(COORD, b"body", peer, ts=1000), 401)):   # addressed to another node
        try:
            auth.check(headers, b"body")
            raise AssertionError(headers)
        except AuthError as exc:
            assert exc.status == status
    assert auth.check(sign_request(COORD, b"body", me, ts=1010), b"body") == coord
    assert Authenticator().open and Authenticator().check({}, b"") == "open"


def test_a_signed_request_cannot_be_replayed_to_this_node_or_another():
    """Attack (issue 14, point 13): node A forwards a request the coordinator
    signed for it to node B, or replays it to itself, to make a node work (and
    sign a leaf) for a job the coordinator did not send it."""
    from eth_account import Account

    coord = Account.from_key(COORD).address
    a, b = Account.from_key(KEY).address, Account.from_key(OTHER).address
    node_a = Authenticator(trusted=[coord], clock=lambda: 1000, address=a)
    node_b = Authenticator(trusted=[coord], clock=lambda: 1000, address=b)
    body = b'{"job_id": "0x' + b"ab" * 16 + b'", "model": "m", "model_id": 1, "input": "0x00"}'
    headers = sign_request(COORD, body, a, ts=1000)
    assert node_a.check(headers, body) == coord
    for auth, status in ((node_b, 401), (node_a, 409)):   # replayed to another node, then to the same one
        try:
            auth.check(headers, body)
            raise AssertionError("replay accepted")
        except AuthError as exc:
            assert exc.status == status
    # the same job id, freshly signed, is refused within the window and accepted once it has passed
    late = Authenticator(trusted=[coord], clock=lambda: 1000, address=a)
    late.check(sign_request(COORD, body, a, ts=1000), body)
    late.clock = lambda: 1059
    try:
        late.check(sign_request(COORD, body, a, ts=1059), body)
        raise AssertionError("repeated job id accepted")
    except AuthError as exc:
        assert exc.status == 409
    late.clock = lambda: 1125
    assert late.check(sign_request(COORD, body, a, ts=1125), body) == coord


def test_batcher_groups_concurrent_jobs_and_keeps_order():
    seen = []
    gate = threading.Event()

    def run_many(jobs):
        gate.wait(5)
        seen.append(len(jobs))
        return [j * 2 if j != 3 else ValueError("three") for j in jobs]

    b = Batcher(run_many, max_batch=8)
    futs = [b.submit(i) for i in range(6)]
    time.sleep(0.05)
    gate.set()
    assert [f.result(5) if i != 3 else f.exception(5).args[0] for i, f in enumerate(futs)] == [0, 2, 4, "three", 8, 10]
    assert sum(seen) == 6 and len(seen) <= 3  # the jobs that queued meanwhile ran together
    b.close()


def test_minilm_batched_equals_one_at_a_time():
    from node import engines
    from opinfer.semantics.jobinput import JobInput

    engine = engines.load("all-minilm-l6-v2")
    jobs = [JobInput(tuple(int(t) for t in np.random.default_rng(s).integers(1000, 20000, size=n)), max_tokens=0)
            for s, n in ((1, 5), (2, 17), (3, 9), (4, 33))]
    batched = engine.run_many(jobs)
    for job, (out, payload) in zip(jobs, batched):
        alone, _ = engine.run(job)
        assert np.array_equal(out, alone)
    bad = engine.run_many([JobInput((1, 2), max_tokens=3), jobs[0]])
    assert isinstance(bad[0], Exception) and np.array_equal(bad[1][0], batched[0][0])


def test_http_errors_and_metrics():
    program = toy_program()
    node = Node(KEY, 31337, ROLLUP, {program.name: 1}, engines_by_name={program.name: ProgramEngine(program)})
    client = TestClient(create_app(node=node, auth=Authenticator("tok")))
    h = {"authorization": "Bearer tok"}
    job = toy_job(1).to_bytes()
    ok = {"job_id": "0x" + "ab" * 16, "model": program.name, "model_id": 1, "input": "0x" + job.hex()}
    r = client.post("/v1/execute", json=ok, headers=h)
    assert r.status_code == 200 and r.json()["node"] == node.address
    assert client.post("/v1/execute", json=ok).status_code == 401
    r = client.post("/v1/execute", json={**ok, "job_id": "0x12"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadJob" and "job_id" in r.json()["error"]["message"]
    r = client.post("/v1/execute", json={**ok, "input": "0x0102"}, headers=h)
    assert r.status_code == 400 and "malformed job input" in r.json()["error"]["message"]
    r = client.post("/v1/execute", json={**ok, "model": "nope"}, headers=h)
    assert r.status_code == 400 and "does not serve" in r.json()["error"]["message"]
    assert client.post("/v1/execute", content=b"x" * 20000, headers=h).status_code == 413
    text = client.get("/metrics").text
    assert 'opinfer_node_jobs_total{model="toy-dot",outcome="ok"} 1.0' in text
    assert 'outcome="refused"' in text and "opinfer_node_auth_failures_total 1.0" in text
    assert client.get("/healthz").json()["status"] == "ok"
    node.draining = True
    assert client.post("/v1/execute", json=ok, headers=h).status_code == 503


def test_the_coordinators_pool_signs_requests_that_a_trusting_node_accepts():
    """coordinator.nodes.NodePool signs each execute request with the
    coordinator's key; a node that trusts that address serves it, a node
    that trusts another refuses it (403) and the pool reports no fault of the node."""
    import asyncio

    import httpx
    import pytest

    from coordinator import routing
    from coordinator.errors import NodeFailure
    from coordinator.metrics import Metrics
    from coordinator.nodes import NodePool
    from eth_account import Account

    program = toy_program()
    job = {"job_id": "0x" + "cd" * 16, "model": program.name, "model_id": 1, "input": "0x" + toy_job(2).to_bytes().hex()}

    def call(trusted: str):
        node = Node(KEY, 31337, ROLLUP, {program.name: 1}, engines_by_name={program.name: ProgramEngine(program)})
        app = create_app(node=node, auth=Authenticator(trusted=[trusted]))
        pool = NodePool(time.monotonic, Metrics(), signer_key=COORD)

        async def post(url, data, headers, limit=None, total_s=None):  # the node's app in process, no socket
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
                resp = await client.post(url, content=data, headers=headers)
            return resp.status_code, resp.content

        pool._post = post
        return asyncio.run(pool.execute(routing.NodeHealth(node.address, "http://node"), job)), node

    answer, node = call(Account.from_key(COORD).address)
    assert answer["node"] == node.address
    with pytest.raises(NodeFailure, match="refused") as refused:
        call(Account.from_key(OTHER).address)
    assert refused.value.fault is False
