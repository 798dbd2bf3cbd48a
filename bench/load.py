"""Sustained load on the coordinator with 1, 2 and 3 nodes.

    python -m bench.load [--seconds 8] [--chat-seconds 12] [--nodes 1,2,3] [--json]

The network is coordinator/local.py's, in this one process, on 127.0.0.1
only: anvil with the protocol, all-MiniLM-L6-v2 and SmolLM2 registered
(SmolLM2 under a stand-in root: no program build, no disputes here), node
servers (uvicorn threads sharing the engines) and the coordinator's app
(uvicorn thread, batch posting on, response cache off per request, no rate
limit). For each node count, nodes are staked and announced one by one and a
fresh coordinator (own SQLite file) is started, so it routes over exactly
that many nodes. Then, per API:

- embeddings: `clients = 2 x nodes` closed-loop clients, each sending a new
  short sentence as soon as its previous answer arrives, for `--seconds`;
- chat: `clients = nodes` closed-loop clients, `max_tokens` 4, for
  `--chat-seconds`.

Printed: answered requests per second, latency p50 / p95 / p99 and errors.
Bounded: every phase has a fixed duration and a fixed client count.

The coordinator's memory over a long run is bench/soak.py's (the coordinator
as its own process).

Caveats: everything shares this machine's cores (and Python's GIL: the node
engines release it inside BLAS, the HTTP layers do not), so the node-count
scaling here understates separate machines; `bench.coordinator` runs each
service as its own process.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import httpx  # noqa: E402


EMBED_MODEL = "all-minilm-l6-v2"
CHAT_MODEL = "smollm2-135m-instruct"
WORDS = ("river", "engine", "garden", "window", "ledger", "signal", "forest", "copper", "harbor", "violet")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def sentence(n: int, i: int) -> str:
    return f"Client {n} asks about the {WORDS[i % 10]} and the {WORDS[(i // 10 + n) % 10]}, number {i}."


def embed_body(n: int, i: int) -> dict:
    return {"model": EMBED_MODEL, "input": sentence(n, i), "opinfer": {"cache": False}}


def chat_body(n: int, i: int) -> dict:
    return {"model": CHAT_MODEL, "max_tokens": 4, "opinfer": {"cache": False},
            "messages": [{"role": "user", "content": sentence(n, i)}]}


def closed_loop(url: str, path: str, body, clients: int, seconds: float, on_answer=None) -> dict:
    """`clients` threads, each sending its next request when the last one is answered."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(n: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = 0
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    r = client.post(url + path, json=body(n, i))
                    ok, why = r.status_code == 200, str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, why = False, type(exc).__name__
                ms = (time.perf_counter() - t) * 1000
                with lock:
                    (latencies.append(ms) if ok else errors.append(why))
                if on_answer:
                    on_answer()
                i += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "rps": len(latencies) / elapsed,
            "p50_ms": pct(latencies, 0.5), "p95_ms": pct(latencies, 0.95), "p99_ms": pct(latencies, 0.99),
            "mean_ms": statistics.fmean(latencies) if latencies else None}


class Bench:
    """One local network; nodes are added one at a time, one coordinator per node count."""

    def __init__(self, tmp: str, max_nodes: int):
        from coordinator.local import serve_nodes, start_network
        from node import engines

        self.tmp = tmp
        self.net = start_network(n_nodes=max_nodes, window=600, chat_root="placeholder")
        serve_nodes(self.net, announce=False)
        for name in engines.ENGINES:
            engines.load(name)
        self.announced = 0
        self.running = None

    def announce_up_to(self, n: int) -> None:
        from opinfer.chain.sender import TxSender

        c = self.net.deployment.contracts
        while self.announced < n:
            key, server = self.net.node_keys[self.announced], self.net.node_servers[self.announced]
            sender = TxSender(self.net.w3, key)
            sender.call(c["StakeManager"].functions.stake_eth(), value=2 * 10**18)
            sender.call(c["ModelRegistry"].functions.announce(server.url, list(self.net.models.values())))
            self.announced += 1

    def coordinator(self, n: int) -> str:
        from coordinator.app import Coordinator, create_app
        from coordinator.local import ServerThread

        self.stop_coordinator()
        self.announce_up_to(n)
        settings = self.net.settings(database_url=f"sqlite:///{self.tmp}/coordinator-{n}.db", rate_limit_rpm=0,
                                     batch_interval_s=2.0)
        c = Coordinator(settings)
        server = ServerThread(create_app(coordinator=c)).start()
        self.running = (c, server)
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/healthz", timeout=5).json().get("nodes_in_rotation", 0) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"coordinator did not see {n} nodes")
            c.refresh_nodes()
            time.sleep(0.2)
        return server.url

    def stop_coordinator(self) -> None:
        if self.running:
            self.running[1].stop()
            self.running[0].stop()
            self.running = None

    def stop(self) -> None:
        self.stop_coordinator()
        self.net.stop()


def compute(node_counts: list[int], seconds: float, chat_seconds: float) -> dict:
    out: dict = {"runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(tmp, max(node_counts))
        try:
            for n in node_counts:
                url = bench.coordinator(n)
                closed_loop(url, "/v1/embeddings", embed_body, 1, 1.0)  # warm-up
                closed_loop(url, "/v1/chat/completions", chat_body, 1, 0.1)
                emb = closed_loop(url, "/v1/embeddings", embed_body, 2 * n, seconds)
                chat = closed_loop(url, "/v1/chat/completions", chat_body, n, chat_seconds)
                out["runs"].append({"nodes": n, "embeddings": emb, "chat": chat})
        finally:
            bench.stop()
    out["meets_target"] = all(r[k]["errors"] == 0 for r in out["runs"] for k in ("embeddings", "chat"))
    return out


def _ms(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def report(r: dict) -> None:
    print(f"{'nodes':>5}  {'api':<11}{'clients':>8}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for run in r["runs"]:
        for api in ("embeddings", "chat"):
            s = run[api]
            print(f"{run['nodes']:>5}  {api:<11}{s['clients']:>8}{s['rps']:>8.2f}{_ms(s['p50_ms']):>9}"
                  f"{_ms(s['p95_ms']):>9}{_ms(s['p99_ms']):>9}{s['errors']:>8}")


def main(argv: list[str]) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2,3", help="node counts to measure (comma-separated, at most 3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="embeddings load per node count")
    parser.add_argument("--chat-seconds", type=float, default=12.0, help="chat load per node count")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    counts = sorted({int(x) for x in args.nodes.split(",") if x.strip()})
    if not counts or counts[0] < 1 or counts[-1] > 3:
        parser.error("--nodes takes counts between 1 and 3")
    result = compute(counts, args.seconds, args.chat_seconds)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
