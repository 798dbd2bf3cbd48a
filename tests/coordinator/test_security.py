"""Attacks on the coordinator by a staked node and by API callers (issue 14,
points 9, 10, 13 and 14), each carried out against the running services: a
hostile node staked and announced on anvil, served over real HTTP, and
small real servers standing for what lies inside the coordinator's network."""

import http.server
import socket
import threading
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from conftest import run_coordinator
from coordinator import keys
from coordinator import models as m
from coordinator.local import ServerThread, free_port
from coordinator.nodes import endpoint_problem
from node.app import ExecuteRequest, Node
from opinfer.chain.anvil import dev_keys
from opinfer.chain.sender import TxSender
from opinfer.trace.leaf import ResultLeaf
from opinfer.trace.outputs import embedding_output, tensor_root

MINILM = "all-minilm-l6-v2"
KEY = dev_keys(10)[8]             # a funded dev account no other role or test uses
STRANGER = dev_keys(10)[7]        # signs where the node should


class Victim:
    """Stands for a service inside the coordinator's network (metadata server, admin
    port): a plain HTTP server on every interface that counts who reached it."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _hit(self):
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'{"secret": "instance credentials"}')

            do_GET = do_POST = _hit

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Hostile:
    """A staked node whose behaviour the test switches: honest, redirecting,
    flooding, dripping, failing, lying with a valid or a foreign signature."""

    def __init__(self, net, victim: Victim):
        self.node = Node(KEY, net.deployment.chain_id, net.addresses["ResultRollup"], net.models)
        self.mode, self.sent, self.victim = "honest", 0, victim
        app = FastAPI()

        @app.get("/healthz")
        def healthz():
            if self.mode == "redirect":
                return RedirectResponse(f"http://127.0.0.1:{victim.port}/latest/meta-data/", 307)
            if self.mode == "huge":
                return StreamingResponse(self.flood())
            return {"status": "ok", "address": self.node.address, "models": self.node.model_ids}

        @app.post("/v1/execute")
        async def execute(request: Request):
            body = await request.json()
            if self.mode == "redirect":
                return RedirectResponse(f"http://127.0.0.1:{victim.port}/admin", 307)
            if self.mode == "huge":
                return StreamingResponse(self.flood())
            if self.mode == "drip":
                return StreamingResponse(self.drip())
            if self.mode == "fail":
                return JSONResponse({"error": {"message": "down"}}, status_code=500)
            from starlette.concurrency import run_in_threadpool

            out = await run_in_threadpool(self.node.execute, ExecuteRequest(**body))
            if self.mode in ("lie", "badsig"):
                out = self.lie(body, out, KEY if self.mode == "lie" else STRANGER)
            return out

        self.server = ServerThread(app).start()
        self.url = self.server.url

    def flood(self):
        chunk = b"[" + b"1," * 32767
        while self.sent < 256 * 2**20:   # 256 MiB unless the reader hangs up
            self.sent += len(chunk)
            yield chunk

    def drip(self):
        for _ in range(600):
            self.sent += 1
            yield b" "
            time.sleep(0.1)

    def lie(self, body, out, key):
        vector = list(out["output"]["embedding"])
        vector[7] += 50
        leaf = ResultLeaf(bytes.fromhex(body["job_id"][2:]), body["model_id"], bytes.fromhex(out["input_root"][2:]),
                          tensor_root(embedding_output(vector)), self.node.address, bytes.fromhex(body["input"][2:]))
        leaf = leaf.signed(key, self.node.chain_id, self.node.rollup)
        return {**out, "output": {"embedding": vector}, "output_root": "0x" + leaf.output_root.hex(),
                "signature": "0x" + leaf.signature.hex()}


@pytest.fixture(scope="module")
def victim():
    v = Victim()
    yield v
    v.server.shutdown()


@pytest.fixture(scope="module")
def hostile(net, victim):
    h = Hostile(net, victim)
    sender = TxSender(net.w3, KEY)
    c = net.deployment.contracts
    sender.call(c["StakeManager"].functions.stake_eth(), value=2 * 10**18)
    h.announce = lambda url: sender.call(c["ModelRegistry"].functions.announce(url, [net.models[MINILM]]))
    h.announce(h.url)
    yield h
    TxSender(net.w3, KEY).call(c["ModelRegistry"].functions.retire())   # fresh nonce: tests used this key
    h.server.stop()


def first(run, hostile, mode):
    """The hostile node in `mode`, ranked first by the coordinator."""
    hostile.mode, hostile.sent = mode, 0
    run.c.refresh_nodes()
    n = run.c.pool.nodes[hostile.node.address]
    n.latency_ms, n.failures, n.ejected_until, n.error_rate = 0.001, 0, 0.0, 0.0
    return n


def embed(url, text, headers=None, **opinfer):
    return httpx.post(f"{url}/v1/embeddings", json={"model": MINILM, "input": text, "opinfer": opinfer},
                      headers=headers or {}, timeout=60)


# ---------------------------------------------------------------- point 9: what a node can make the coordinator do

def test_announced_endpoints_are_vetted():
    refused = ["file:///etc/passwd", "gopher://example.com/", "http://169.254.169.254/latest", "http://10.0.0.8:80",
               "http://[::1]:8000", "http://[::ffff:127.0.0.1]:80", "http://0.0.0.0:8000", "http://localhost:6379",
               "http://user:pw@example.com", "http://example.com/?x=1", "http://224.0.0.1", "http://100.64.0.1",
               "http://192.168.1.1", "http://" + "a" * 300 + ".com"]
    for url in refused:
        assert endpoint_problem(url) is not None, url
    for url in ("https://node.example.com", "http://8.8.8.8:8080", "https://[2606:4700::1111]/prefix"):
        assert endpoint_problem(url) is None, url
    assert endpoint_problem("http://127.0.0.1:8000", allow_private=True) is None   # the devnet allowance
    assert endpoint_problem("ftp://127.0.0.1", allow_private=True) is not None


def test_a_staked_node_cannot_point_the_coordinator_inside_its_network(net, tmp_path, hostile, victim):
    """Announced on-chain: the victim's loopback port, then a host name that
    resolves to loopback (`hostname` -> 127.0.0.1 here), checked at connect time."""
    run = run_coordinator(net, tmp_path / "c.db", allow_private_endpoints=False)
    try:
        for url in (f"http://127.0.0.1:{victim.port}", f"http://[::1]:{victim.port}"):
            hostile.announce(url)
            run.c.refresh_nodes()
            r = embed(run.url, "Reach inside.", cache=False)
            assert victim.hits == []
            assert r.status_code == 503     # every devnet node is on 127.0.0.1: all refused
            node = run.c.pool.nodes[hostile.node.address]
            assert node.endpoint_problem and "loopback" in node.endpoint_problem
            assert not node.in_rotation(time.time())
        name = socket.gethostname()
        assert not socket.gethostbyname(name).startswith(("8.", "1.1."))   # resolves inside
        hostile.announce(f"http://{name}:{victim.port}")
        run.c.refresh_nodes()
        node = run.c.pool.nodes[hostile.node.address]
        assert node.endpoint_problem is None and "health" in node.last_error   # the guarded resolver refused it
        r = embed(run.url, "Reach inside by name.", cache=False)
        assert r.status_code == 503
        assert victim.hits == []
        with run.c.sessions() as s:
            row = s.get(m.Node, hostile.node.address)
        assert row.last_error
    finally:
        hostile.announce(hostile.url)
        run.stop()


def test_redirects_are_not_followed(net, tmp_path, hostile, victim):
    run = run_coordinator(net, tmp_path / "c.db", backoff_base_s=0.01)
    try:
        node = first(run, hostile, "redirect")
        run.c.pool.check(node)
        r = embed(run.url, "Follow me.", cache=False)
        assert r.status_code == 200 and r.json()["opinfer"]["node"] != hostile.node.address
        assert "redirect" in node.last_error
        assert victim.hits == []
    finally:
        hostile.mode = "honest"
        run.stop()


def test_a_flooding_or_dripping_node_is_cut_off(net, tmp_path, hostile):
    run = run_coordinator(net, tmp_path / "c.db", node_timeout_s=1.0, node_health_timeout_s=1.0,
                          backoff_base_s=0.01)
    try:
        node = first(run, hostile, "huge")
        started = time.monotonic()
        r = embed(run.url, "Drown me.", cache=False)
        assert r.status_code == 200 and r.json()["opinfer"]["node"] != hostile.node.address
        assert "too large" in node.last_error and time.monotonic() - started < 5
        assert hostile.sent < 32 * 2**20     # read a bounded prefix, not the 256 MiB
        assert not run.c.pool.check(node) and "TooLarge" in node.last_error   # /healthz too

        node = first(run, hostile, "drip")
        started = time.monotonic()
        r = embed(run.url, "Drip on me.", cache=False)
        assert r.status_code == 200 and r.json()["opinfer"]["node"] != hostile.node.address
        assert node.last_error == "timeout" and time.monotonic() - started < 5
    finally:
        hostile.mode = "honest"
        run.stop()


# ---------------------------------------------------------------- point 10: lies served and cached before any check

def test_a_lie_signed_by_another_key_is_never_served_or_cached(net, tmp_path, hostile):
    run = run_coordinator(net, tmp_path / "c.db", backoff_base_s=0.01)
    try:
        node = first(run, hostile, "badsig")
        a = embed(run.url, "Sign it, or it did not happen.")
        assert a.status_code == 200 and a.json()["opinfer"]["node"] != hostile.node.address
        assert "bad signature" in node.last_error and not node.in_rotation(time.time())   # out at once
        hostile.mode = "honest"
        b = embed(run.url, "Sign it, or it did not happen.")   # the cache, or an honest node: never the lie
        assert b.json()["data"][0]["embedding"] == a.json()["data"][0]["embedding"]
        with run.c.sessions() as s:
            assert s.query(m.Leaf).filter(m.Leaf.node == hostile.node.address).count() == 0
    finally:
        hostile.mode = "honest"
        run.stop()


def test_a_cached_answer_needs_a_leaf_on_its_way_to_the_chain(net, tmp_path):
    run = run_coordinator(net, tmp_path / "c.db")
    try:
        a = embed(run.url, "Rejected later.").json()["opinfer"]
        with run.c.sessions() as s, s.begin():
            leaf = s.query(m.Leaf).filter(m.Leaf.job_id == a["job_id"][2:]).one()
            leaf.status, leaf.note = m.REJECTED, "node has no slashable stake"
        b = embed(run.url, "Rejected later.").json()["opinfer"]
        assert not b["cached"] and b["job_id"] != a["job_id"]
    finally:
        run.stop()


def test_a_node_whose_leaf_is_rejected_leaves_the_rotation(net, tmp_path):
    run = run_coordinator(net, tmp_path / "c.db")
    try:
        address = next(iter(run.c.pool.nodes))
        run.c._reject_node(address, "signature does not recover to the node")
        node = run.c.pool.nodes[address]
        assert not node.in_rotation(time.time())
        run.c.pool.success(node, 1.0)          # an answer in flight when it was ejected
        assert not node.in_rotation(time.time())
    finally:
        run.stop()


# ---------------------------------------------------------------- point 13: event loop, keys, consensus billing

def test_megabyte_prompts_do_not_block_the_event_loop(coord):
    big = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "word " * 199_000}],
           "max_tokens": 4}
    worst, statuses = 0.0, []

    def send():
        statuses.append(httpx.post(f"{coord.url}/v1/chat/completions", json=big, timeout=60).status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        httpx.get(f"{coord.url}/healthz", timeout=30)
        worst = max(worst, time.monotonic() - started)
    assert statuses == [400] * 4
    assert worst < 0.3, f"/healthz waited {worst:.2f} s"


def test_api_keys_fail_closed(net, tmp_path, monkeypatch):
    from coordinator.settings import Settings

    for name in ("OPINFER_REQUIRE_API_KEY", "OPINFER_ANONYMOUS_RATE_LIMIT_RPM"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings(_env_file=None)
    assert defaults.require_api_key and defaults.anonymous_rate_limit_rpm > 0 and not defaults.allow_private_endpoints
    run = run_coordinator(net, tmp_path / "c.db", auth_failure_rpm=3, key_cache_entries=2)   # keys optional
    try:
        with run.c.sessions() as s, s.begin():
            _, secret = keys.create(s, "alice", time.time())
        alice = {"authorization": f"Bearer {secret}"}
        assert embed(run.url, "alice", alice).status_code == 200
        r = embed(run.url, "typo", {"authorization": "Bearer sk-opi-typo"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"   # not anonymous
        for i in range(2):
            assert embed(run.url, "guess", {"authorization": f"Bearer sk-opi-guess{i}"}).status_code == 401
        r = embed(run.url, "guess", {"authorization": "Bearer sk-opi-guess9"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1   # failed lookups are limited
        assert len(run.c.key_cache) <= 2                                    # LRU-bounded, never cleared whole
    finally:
        run.stop()


def test_consensus_is_billed_and_rate_limited_per_job(net, tmp_path):
    run = run_coordinator(net, tmp_path / "c.db", rate_limit_rpm=5)
    try:
        with run.c.sessions() as s, s.begin():
            _, secret = keys.create(s, "bob", time.time())
        bob = {"authorization": f"Bearer {secret}"}
        r = embed(run.url, "Three nodes, three bills.", bob, consensus=3, cache=False)
        assert r.status_code == 200
        (row,) = httpx.get(f"{run.url}/v1/usage", headers=bob).json()["data"]
        price = net.deployment.contracts["ModelRegistry"].functions.get_model(net.models[MINILM]).call()[2]
        assert int(row["cost_wei"]) == 3 * -(-price * row["total_tokens"] // 1000)
        r = embed(run.url, "Three more jobs.", bob, consensus=3, cache=False)   # 1 + 3 + 1 (usage) > 5
        assert r.status_code == 429
    finally:
        run.stop()


def test_a_failed_consensus_slot_keeps_the_finished_ones(net, tmp_path, hostile):
    run = run_coordinator(net, tmp_path / "c.db", max_attempts=1)
    try:
        first(run, hostile, "fail")
        r = embed(run.url, "Two of three.", consensus=3, cache=False)
        assert r.status_code == 503 and "2 of 3" in r.json()["error"]["message"]
        job_id = r.json()["error"]["message"].split("job ")[-1].split()[0]
        job = httpx.get(f"{run.url}/v1/jobs/{job_id}").json()
        assert len(job["leaves"]) == 2
        run.c.post_batches()
        assert {leaf["status"] for leaf in httpx.get(f"{run.url}/v1/jobs/{job_id}").json()["leaves"]} == {"posted"}
        with run.c.sessions() as s:
            (usage,) = s.query(m.Usage).filter(m.Usage.job_id == job_id[2:]).all()
        price = net.deployment.contracts["ModelRegistry"].functions.get_model(net.models[MINILM]).call()[2]
        assert int(usage.cost_wei) == 2 * -(-price * usage.prompt_tokens // 1000)
    finally:
        hostile.mode = "honest"
        run.stop()


# ---------------------------------------------------------------- point 14: ties, flags, exposure

def test_a_tie_is_not_won_by_the_fastest_liar_and_is_flagged(net, tmp_path, hostile):
    run = run_coordinator(net, tmp_path / "c.db")
    try:
        first(run, hostile, "lie")
        body = embed(run.url, "Two nodes, one liar.", consensus=2, cache=False).json()["opinfer"]
        assert body["node"] != hostile.node.address
        assert body["consensus"] == {"k": 3, "agreed": 2}          # a third node broke the tie
        flagged = httpx.get(f"{run.url}/v1/disagreements").json()["data"]
        (item,) = [d for d in flagged if d["job_id"] == body["job_id"]]
        liar = [leaf for leaf in item["leaves"] if leaf["node"] == hostile.node.address]
        assert len(item["leaves"]) == 3 and liar and not liar[0]["agrees"]
        assert "opinfer_consensus_disagreements_total" in httpx.get(f"{run.url}/metrics").text
    finally:
        hostile.mode = "honest"
        run.stop()


def test_metrics_and_usage_need_a_key(net, tmp_path):
    run = run_coordinator(net, tmp_path / "c.db", public_metrics=False)
    try:
        with run.c.sessions() as s, s.begin():
            _, secret = keys.create(s, "ops", time.time())
        assert embed(run.url, "Anonymous traffic.").status_code == 200
        assert httpx.get(f"{run.url}/metrics").status_code == 401
        assert httpx.get(f"{run.url}/v1/usage").status_code == 401
        auth = {"authorization": f"Bearer {secret}"}
        assert "opinfer_jobs_total" in httpx.get(f"{run.url}/metrics", headers=auth).text
        assert httpx.get(f"{run.url}/v1/usage", headers=auth).json()["data"] == []   # its own only
        assert httpx.get(f"{run.url}/healthz").status_code == 200                     # liveness stays open
    finally:
        run.stop()


def test_a_liar_that_unbonds_before_the_posting_tick_is_still_posted(net, tmp_path, hostile):
    """Point 10: a node serves a lie with a valid signature and calls request_unbond
    before the next posting tick. Its stake is unbonding but slashable, so its
    leaf must go on-chain where a challenger can see it (was: rejected as "node
    not staked", never posted). Last in this module: it unbonds the hostile node."""
    c = net.deployment.contracts
    sender = TxSender(net.w3, KEY)
    run = run_coordinator(net, tmp_path / "c.db")
    try:
        first(run, hostile, "lie")
        body = embed(run.url, "Lie, then leave.", cache=False).json()["opinfer"]
        assert body["node"] == hostile.node.address
        stake = c["StakeManager"].functions.stake(hostile.node.address).call()
        sender.call(c["StakeManager"].functions.request_unbond(stake))
        assert c["StakeManager"].functions.slashable(hostile.node.address).call() > 0
        honest = embed(run.url, "Posted alongside.", cache=False).json()["opinfer"]
        run.c.post_batches()
        job = httpx.get(f"{run.url}/v1/jobs/{body['job_id']}").json()
        assert job["status"] != "rejected"                       # the coordinator does not drop it itself
        assert httpx.get(f"{run.url}/v1/jobs/{honest['job_id']}").json()["status"] == "posted"   # no stall
        assert job["status"] == "posted" and job["batch_id"]
    finally:
        hostile.mode = "honest"
        run.stop()
        TxSender(net.w3, KEY).call(c["StakeManager"].functions.stake_eth(), value=2 * 10**18)
