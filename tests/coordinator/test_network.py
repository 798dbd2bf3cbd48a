"""Network behaviour over real HTTP: retries on distinct nodes with
per-node timeouts, ejection, 503 when no node answers, the stale-cache
fallback, API keys with per-key limits and usage, and the scheduler
posting as soon as M leaves wait."""

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from conftest import run_coordinator
from coordinator import keys
from coordinator import models as m
from coordinator.local import ServerThread, free_port

MINILM = "all-minilm-l6-v2"
DEAD = "0x" + "de" * 20
SLOW = "0x" + "51" * 20


@pytest.fixture(scope="module")
def slow_node():
    app = FastAPI()

    @app.post("/v1/execute")
    async def execute():
        await asyncio.sleep(3)
        return {}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "address": SLOW}

    server = ServerThread(app).start()
    yield server
    server.stop()


def embed(url, text, headers=None, **opinfer):
    return httpx.post(f"{url}/v1/embeddings", json={"model": MINILM, "input": text, "opinfer": opinfer},
                      headers=headers or {}, timeout=60)


def test_retries_go_to_other_nodes_and_failures_are_counted(net, tmp_path, slow_node):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = run_coordinator(net, tmp_path / "c.db", static_nodes=f"{DEAD}@{dead},{SLOW}@{slow_node.url}",
                          node_timeout_s=0.5, backoff_base_s=0.01)
    try:
        pool = run.c.pool
        pool.nodes[DEAD].latency_ms, pool.nodes[SLOW].latency_ms = 0.1, 0.2   # ranked first and second
        pool.nodes[DEAD].failures = 0
        body = embed(run.url, "Third time lucky.", cache=False).json()
        assert body["opinfer"]["node"] not in (DEAD, SLOW)
        metrics = httpx.get(f"{run.url}/metrics").text
        assert f'opinfer_node_errors_total{{node="{SLOW}",reason="timeout"}} 1.0' in metrics
        assert f'opinfer_node_errors_total{{node="{DEAD}",reason="unreachable"}}' in metrics
    finally:
        run.stop()


def test_no_node_gives_503_then_ejection_then_stale_answer(net, tmp_path, monkeypatch):
    run = run_coordinator(net, tmp_path / "c.db", cache_ttl_s=0.2, cache_stale_s=60, eject_after_failures=2)
    try:
        fresh = embed(run.url, "Remember me.").json()
        # Every node disappears: the registry lists none, one static node is dead.
        monkeypatch.setattr(run.c.chain, "nodes", lambda: [])
        run.c.settings.static_nodes = f"{DEAD}@http://127.0.0.1:{free_port()}"
        run.c.refresh_nodes()                      # health check: failure 1
        time.sleep(0.3)                            # the cached answer is stale now
        r = embed(run.url, "Remember me.")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_node_available"  # failure 2: ejected
        assert not run.c.pool.nodes[DEAD].in_rotation(time.time())
        r = embed(run.url, "Remember me.", allow_stale=True)
        assert r.status_code == 200 and r.json()["opinfer"]["stale"] is True
        assert r.json()["opinfer"]["job_id"] == fresh["opinfer"]["job_id"]
        assert r.json()["data"][0]["embedding"] == fresh["data"][0]["embedding"]
        r = embed(run.url, "Never seen.", allow_stale=True)
        assert r.status_code == 503 and "none in rotation" in r.json()["error"]["message"]
        assert httpx.get(f"{run.url}/healthz").status_code == 503
    finally:
        run.stop()


def test_api_keys_limits_and_usage(net, tmp_path):
    run = run_coordinator(net, tmp_path / "c.db", require_api_key=True, rate_limit_rpm=3)
    try:
        with run.c.sessions() as s, s.begin():
            _, secret = keys.create(s, "alice", time.time())
            _, other = keys.create(s, "bob", time.time(), rate_limit_rpm=100)
        assert embed(run.url, "no key").status_code == 401
        r = embed(run.url, "bad key", {"authorization": "Bearer sk-opi-wrong"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        alice = {"authorization": f"Bearer {secret}"}
        for i in range(2):
            assert embed(run.url, f"paid request {i}", alice).status_code == 200
        usage = httpx.get(f"{run.url}/v1/usage", headers=alice).json()   # the third request
        r = embed(run.url, "one too many", alice)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert embed(run.url, "bob is not limited by alice", {"authorization": f"Bearer {other}"}).status_code == 200
        (row,) = usage["data"]
        price = net.deployment.contracts["ModelRegistry"].functions.get_model(net.models[MINILM]).call()[2]
        assert row["requests"] == 2 and int(row["cost_wei"]) == -(-price * row["total_tokens"] // 1000)
        with run.c.sessions() as s:
            hashes = s.scalars(select(m.ApiKey.key_hash)).all()
        assert keys.hash_key(secret) in hashes and secret not in hashes
        assert secret.encode() not in (tmp_path / "c.db").read_bytes()
    finally:
        run.stop()


def test_scheduler_posts_as_soon_as_m_leaves_wait(net, tmp_path):
    run = run_coordinator(net, tmp_path / "c.db", scheduler=True, batch_interval_s=3600, batch_max_jobs=2,
                          finalize_interval_s=3600, node_refresh_s=3600)
    try:
        ids = [embed(run.url, f"scheduled {i}", cache=False).json()["opinfer"]["job_id"] for i in range(2)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            statuses = {httpx.get(f"{run.url}/v1/jobs/{i}").json()["status"] for i in ids}
            if statuses == {"posted"}:
                break
            time.sleep(0.2)
        assert statuses == {"posted"}
    finally:
        run.stop()
