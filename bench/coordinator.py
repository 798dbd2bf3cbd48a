"""Coordinator figures, side by side in one run (python -m bench.coordinator [--json]).

A local network: anvil with the protocol, all-MiniLM-L6-v2 registered, 3
staked nodes and the coordinator, each its own process (as deployed), on
127.0.0.1. Measured:

1. overhead: the same short embedding job sent alternately to a node
   directly (POST /v1/execute with the job input) and through the
   coordinator (POST /v1/embeddings, cache off): p50 and p95 of each and of
   the difference. Target: p50 overhead <= 5 ms.
2. end to end: p50 of a short embedding request through the coordinator.
   Target: < 100 ms.
3. sustained: concurrent clients for a fixed time with batch posting on
   (every 2 s or 64 leaves): requests per second, and posting lag (answer
   to batch receipt; and how long after the load the last leaf is posted).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import run, verdict
from bench.load import closed_loop, pct

REPO = Path(__file__).resolve().parents[1]
TEXT = "A short sentence to embed."
OVERHEAD_TARGET_MS = 5.0
E2E_TARGET_MS = 100.0
# Four processes share the machine's cores: one BLAS thread each avoids oversubscription.
THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def wait_up(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def spawn(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "opinfer.cli", *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **THREADS, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Network:
    def __init__(self, tmp: str, window: int = 600, coordinator_env: dict | None = None):
        from coordinator.local import free_port, start_network
        from opinfer.chain.sender import TxSender

        self.net = start_network(n_nodes=3, window=window, models=("embedding",))
        self.procs: list[subprocess.Popen] = []
        models = ",".join(f"{k}={v}" for k, v in self.net.models.items())
        c = self.net.deployment.contracts
        self.node_urls = []
        for key in self.net.node_keys:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            self.procs.append(spawn(["node", "run", "--port", str(port), "--no-chain"], {
                "OPINFER_NODE_KEY": key, "OPINFER_NODE_CHAIN_ID": str(self.net.deployment.chain_id),
                "OPINFER_NODE_ROLLUP_ADDRESS": self.net.addresses["ResultRollup"], "OPINFER_NODE_MODELS": models}))
            sender = TxSender(self.net.w3, key)
            sender.call(c["StakeManager"].functions.stake_eth(), value=2 * 10**18)
            sender.call(c["ModelRegistry"].functions.announce(url, list(self.net.models.values())))
            self.node_urls.append(url)
        for url in self.node_urls:
            wait_up(url)
        self.url = start_coordinator(self.net, tmp, self.procs, {"OPINFER_BATCH_MAX_JOBS": "64",
                                                                 **(coordinator_env or {})})

    def stop(self) -> None:
        stop_all(self.procs, self.net)


def start_coordinator(net, tmp: str, procs: list, env: dict) -> str:
    """The coordinator as its own process over net (appended to procs); its URL once it answers."""
    from coordinator.local import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs.append(spawn(["coordinator", "run", "--port", str(port)], {
        **net.coordinator_env(), "OPINFER_DATABASE_URL": f"sqlite:///{tmp}/coordinator.db",
        "OPINFER_DEVNET_FILE": "/nonexistent", "OPINFER_BATCH_INTERVAL_S": "2",
        "OPINFER_FINALIZE_INTERVAL_S": "30", "OPINFER_RATE_LIMIT_RPM": "0", **env}))
    wait_up(url)
    return url


def stop_all(procs: list, net) -> None:
    """Terminate the processes (kill those that do not exit in 10 s), then the chain."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    net.stop()


def cpu_s(proc: subprocess.Popen) -> float:
    import psutil

    t = psutil.Process(proc.pid).cpu_times()
    return t.user + t.system


def overhead(network: Network, rounds: int = 200) -> dict:
    from opinfer.models.minilm import weights as fw
    from opinfer.semantics.jobinput import JobInput

    data = JobInput(tuple(int(i) for i in fw.encode(TEXT))).to_bytes()
    model_id = next(iter(network.net.models.values()))
    direct, via = [], []
    coordinator = network.procs[-1]
    with httpx.Client(timeout=30) as client:
        for i in range(rounds + 20):
            if i == 20:
                cpu0 = cpu_s(coordinator)
            body = {"job_id": "0x" + os.urandom(16).hex(), "model": "all-minilm-l6-v2", "model_id": model_id,
                    "input": "0x" + data.hex()}
            t = time.perf_counter()
            r = client.post(network.node_urls[i % 3] + "/v1/execute", json=body)
            d = time.perf_counter() - t
            assert r.status_code == 200, r.text
            t = time.perf_counter()
            r = client.post(network.url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": TEXT,
                                                                  "opinfer": {"cache": False}})
            v = time.perf_counter() - t
            assert r.status_code == 200, r.text
            if i >= 20:  # warm-up
                direct.append(d * 1000)
                via.append(v * 1000)
    # CPU the coordinator process spent per request (not inflated by other
    # processes competing for the cores, unlike wall-clock latency).
    cpu_ms = (cpu_s(coordinator) - cpu0) / rounds * 1000
    diffs = [v - d for v, d in zip(via, direct)]
    p50 = pct(via, 0.5) - pct(direct, 0.5)
    return {"rounds": rounds, "direct_p50_ms": pct(direct, 0.5), "direct_p95_ms": pct(direct, 0.95),
            "coordinator_p50_ms": pct(via, 0.5), "coordinator_p95_ms": pct(via, 0.95),
            "overhead_p50_ms": p50, "overhead_p95_ms": pct(via, 0.95) - pct(direct, 0.95),
            "paired_overhead_median_ms": statistics.median(diffs), "coordinator_cpu_ms_per_request": cpu_ms,
            "target_ms": OVERHEAD_TARGET_MS, "meets_target": p50 <= OVERHEAD_TARGET_MS}


def end_to_end(section: dict) -> dict:
    p50 = section["coordinator_p50_ms"]
    return {"p50_ms": p50, "p95_ms": section["coordinator_p95_ms"], "target_ms": E2E_TARGET_MS,
            "meets_target": p50 < E2E_TARGET_MS}


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_drained(network: Network, timeout: float = 60.0) -> bool:
    """Until no leaf waits for a batch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(network.url + "/healthz").json().get("pending_leaves", 1) == 0:
            return True
        time.sleep(0.1)
    return False


def sustained(network: Network, seconds: float = 15.0, clients: int = 6) -> dict:
    wait_drained(network)
    before = metric(httpx.get(network.url + "/metrics").text, "opinfer_posting_lag_seconds_count")
    load = closed_loop(network.url, "/v1/embeddings", lambda n, i: {
        "model": "all-minilm-l6-v2", "input": f"load {n} {i}", "opinfer": {"cache": False}}, clients, seconds)
    ended = time.monotonic()
    drained = wait_drained(network)
    drain = drained and time.monotonic() - ended
    text = httpx.get(network.url + "/metrics").text
    count = metric(text, "opinfer_posting_lag_seconds_count")
    lag = metric(text, "opinfer_posting_lag_seconds_sum") / count if count else None  # whole run
    batches = metric(text, "opinfer_batch_leaves_count")
    return {"seconds": load["seconds"], "clients": clients, "nodes": 3, "requests": load["requests"],
            "errors": load["errors"], "rps": load["rps"], "leaves_posted": int(count - before),
            "batches": int(batches), "mean_posting_lag_s": lag, "drain_after_load_s": drain,
            "meets_target": not load["errors"] and drain is not None and int(count - before) == load["requests"]}


def compute() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        network = Network(tmp)
        try:
            over = overhead(network)
            return {"overhead": over, "embedding_end_to_end": end_to_end(over), "sustained": sustained(network)}
        finally:
            network.stop()


def report(r: dict) -> None:
    o, e, s = r["overhead"], r["embedding_end_to_end"], r["sustained"]
    print("coordinator vs node, same short embedding job, alternating, "
          f"{o['rounds']} rounds (ms)")
    print(f"  {'':22}{'p50':>9}{'p95':>9}")
    print(f"  {'node directly':22}{o['direct_p50_ms']:9.2f}{o['direct_p95_ms']:9.2f}")
    print(f"  {'through coordinator':22}{o['coordinator_p50_ms']:9.2f}{o['coordinator_p95_ms']:9.2f}")
    print(f"  {'overhead':22}{o['overhead_p50_ms']:9.2f}{o['overhead_p95_ms']:9.2f}"
          f"   target p50 <= {o['target_ms']} ms: {verdict(o['meets_target'])}")
    print(f"  coordinator CPU per request {o['coordinator_cpu_ms_per_request']:.2f} ms (load-independent)")
    print(f"embedding end to end p50 {e['p50_ms']:.1f} ms (target < {e['target_ms']:.0f} ms: "
          f"{verdict(e['meets_target'])})")
    lag = s["mean_posting_lag_s"]
    drain = s["drain_after_load_s"]
    print(f"sustained, {s['nodes']} nodes, {s['clients']} clients, {s['seconds']} s: {s['rps']:.1f} req/s, "
          f"{s['errors']} errors; {s['leaves_posted']} leaves posted, mean posting lag "
          f"{lag if lag is None else round(lag, 2)} s, last leaf posted {drain if drain is None else round(drain, 2)} s "
          f"after the load ({verdict(s['meets_target'])})")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:], __doc__, compute, report))
