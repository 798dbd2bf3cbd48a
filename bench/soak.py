"""The coordinator's memory under a long, mixed load (python -m bench.soak [--seconds 600] [--clients 4] [--json]).

The network of bench.coordinator, each service its own process on
127.0.0.1 (anvil, 3 nodes with all-MiniLM-L6-v2, the coordinator on
SQLite), with a 60 s challenge window so that batches are posted and
finalized during the run. Traffic, closed loop, for `--seconds`:

- `--clients` embedding clients: nine requests in ten are new sentences
  with the cache off (a new job, leaf and usage row each), one in ten
  repeats one of 50 sentences with the cache on (hits);
- one reader: every second the job view of a recent job (inclusion proof),
  its batch, /healthz and /metrics.

The coordinator process's resident memory (RSS) is sampled every 5 s.
Printed: RSS at the start, after the warm-up (the first 40% of the run, in
which the bounded caches fill: responses, proof trees, SQLite's page cache
per pooled connection, the allocator's arenas) and at the end; the growth
from the median of the first minute after the warm-up to the median of the
last minute, per request too; the least-squares slope over the second half.
Target (flat): growth below 5 MiB and a slope below 0.5 MiB per minute.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import threading
import time

import httpx

from bench.common import run, verdict
from bench.coordinator import Network, metric
from bench.load import pct

SAMPLE_S = 5.0
# The bounded caches (responses, proof trees, SQLite's page cache per pooled
# connection) and the allocator's arenas fill during the first minutes: on this
# machine the RSS curve turns flat after about 4 minutes of the 10.
WARMUP = 0.4
# Smaller than the default 10,000 so that the bounded response cache is full
# before the warm-up ends (at the default it is full after 10,000 requests).
CACHE_ENTRIES = 2_000
FLAT_MIB, FLAT_SLOPE = 5.0, 0.5
MODEL = "all-minilm-l6-v2"
REPEATED = [f"A sentence that many users send, variant {i}." for i in range(50)]


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def slope_per_min(points: list[tuple[float, float]]) -> float:
    ts, ms = [t for t, _ in points], [m for _, m in points]
    t_mean, m_mean = statistics.fmean(ts), statistics.fmean(ms)
    var = sum((t - t_mean) ** 2 for t in ts)
    return 60 * sum((t - t_mean) * (m - m_mean) for t, m in zip(ts, ms)) / var if var else 0.0


class Traffic:
    def __init__(self, url: str, clients: int, seconds: float):
        self.url, self.clients, self.stop_at = url, clients, time.monotonic() + seconds
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.job_ids: list[str] = []
        self.reads = 0

    def _count(self, ok: bool, why: str, ms: float) -> None:
        with self.lock:
            if ok:
                self.latencies.append(ms)
            else:
                self.errors[why] = self.errors.get(why, 0) + 1

    def embedder(self, n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(timeout=60) as client:
            i = 0
            while time.monotonic() < self.stop_at:
                repeat = rng.random() < 0.1
                text = rng.choice(REPEATED) if repeat else f"Soak client {n} sentence {i}: {rng.random():.6f}."
                t = time.perf_counter()
                try:
                    r = client.post(self.url + "/v1/embeddings",
                                    json={"model": MODEL, "input": text, "opinfer": {"cache": repeat}})
                    ok, why = r.status_code == 200, f"http {r.status_code}"
                except httpx.HTTPError as exc:
                    ok, why = False, type(exc).__name__
                self._count(ok, why, (time.perf_counter() - t) * 1000)
                if ok and i % 20 == 0:
                    with self.lock:
                        self.job_ids = (self.job_ids + [r.headers["x-opinfer-job-id"]])[-100:]
                i += 1

    def reader(self) -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < self.stop_at:
                with self.lock:
                    job_id = self.job_ids[0] if self.job_ids else None
                try:
                    paths = ["/healthz", "/metrics"]
                    if job_id:
                        job = client.get(f"{self.url}/v1/jobs/{job_id}").json()
                        paths.append(f"/v1/batches/{job['batch_id']}" if job.get("batch_id") is not None
                                     else "/v1/models")
                    for path in paths:
                        client.get(self.url + path).raise_for_status()
                    self.reads += 1
                except httpx.HTTPError as exc:
                    self._count(False, f"read {type(exc).__name__}", 0)
                time.sleep(1.0)


def analyse(samples: list[tuple[float, float, int]]) -> dict:
    """Figures of an RSS trace [(seconds, MiB, requests so far)]: the warm-up is
    the first WARMUP share of the run; growth is from the median of the first
    minute after it to the median of the last minute; the slope is fitted
    over the second half."""
    elapsed = samples[-1][0]
    warm = elapsed * WARMUP
    steady = [s for s in samples if s[0] >= warm]
    first = [s for s in steady if s[0] < warm + 60] or steady[:1]
    last = [s for s in steady if s[0] >= elapsed - 60] or steady[-1:]
    head, tail = statistics.median(s[1] for s in first), statistics.median(s[1] for s in last)
    growth = tail - head
    requests = last[-1][2] - first[0][2]
    slope = slope_per_min([(t, m) for t, m, _ in samples if t >= elapsed / 2])
    return {"rss_start_mib": samples[0][1], "warmup_s": round(warm), "rss_after_warmup_mib": head,
            "rss_end_mib": tail, "rss_max_mib": max(s[1] for s in samples), "growth_mib": growth,
            "bytes_per_request": growth * 2**20 / requests if requests > 0 else None,
            "second_half_slope_mib_per_min": slope,
            "target": f"growth < {FLAT_MIB} MiB after the warm-up and second-half slope < {FLAT_SLOPE} MiB/min",
            "flat": growth < FLAT_MIB and slope < FLAT_SLOPE}


def soak(network: Network, seconds: float, clients: int) -> dict:
    pid = network.procs[-1].pid
    traffic = Traffic(network.url, clients, seconds)
    threads = [threading.Thread(target=traffic.embedder, args=(n,), daemon=True) for n in range(clients)]
    threads.append(threading.Thread(target=traffic.reader, daemon=True))
    samples: list[tuple[float, float, int]] = []   # (seconds, RSS MiB, requests answered so far)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        with traffic.lock:
            answered = len(traffic.latencies)
        samples.append((time.monotonic() - t0, rss_mib(pid), answered))
        time.sleep(SAMPLE_S)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    samples.append((elapsed, rss_mib(pid), len(traffic.latencies)))
    figures = analyse(samples)
    health = httpx.get(network.url + "/healthz").json()
    text = httpx.get(network.url + "/metrics").text
    return {"seconds": round(elapsed, 1), "clients": clients, "requests": len(traffic.latencies),
            "rps": len(traffic.latencies) / elapsed, "p50_ms": pct(traffic.latencies, 0.5),
            "p99_ms": pct(traffic.latencies, 0.99), "errors": sum(traffic.errors.values()),
            "error_kinds": traffic.errors, "reads": traffic.reads, "samples": len(samples),
            **figures, "last_batch": health.get("last_batch"), "pending_leaves": health.get("pending_leaves"),
            "leaves_posted": int(metric(text, "opinfer_posting_lag_seconds_count")),
            "leaves_final": int(metric(text, "opinfer_finalization_lag_seconds_count")),
            "meets_target": figures["flat"] and not traffic.errors,
            "trace": [(round(t), round(m, 1), n) for t, m, n in samples]}


def compute(seconds: float, clients: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        network = Network(tmp, window=60, coordinator_env={"OPINFER_FINALIZE_INTERVAL_S": "5",
                                                           "OPINFER_CACHE_ENTRIES": str(CACHE_ENTRIES)})
        try:
            return {"soak": soak(network, seconds, clients)}
        finally:
            network.stop()


def report(r: dict) -> None:
    s = r["soak"]
    print(f"coordinator soak: {s['seconds']} s, {s['clients']} embedding clients + 1 reader, {s['requests']} requests "
          f"({s['rps']:.1f}/s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms), {s['errors']} errors, "
          f"{s['reads']} reader rounds; {s['leaves_posted']} leaves posted in {s['last_batch']} batches, "
          f"{s['leaves_final']} final")
    per = s["bytes_per_request"]
    print(f"  RSS start {s['rss_start_mib']:.1f} MiB, after warm-up {s['rss_after_warmup_mib']:.1f}, "
          f"end {s['rss_end_mib']:.1f}, max {s['rss_max_mib']:.1f}: growth {s['growth_mib']:+.2f} MiB "
          f"({'n/a' if per is None else f'{per:+.0f}'} bytes per request) after the {s['warmup_s']} s warm-up, "
          f"second-half slope {s['second_half_slope_mib_per_min']:+.3f} MiB/min "
          f"({s['target']}: {verdict(s['meets_target'])})")
    print("  RSS each minute (s: MiB): " + " ".join(f"{t}: {m}" for t, m, _ in s["trace"][::12]))


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=4)
    args, rest = parser.parse_known_args(argv)
    return run(rest, __doc__, lambda: compute(args.seconds, args.clients), report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
