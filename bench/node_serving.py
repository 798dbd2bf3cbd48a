"""Streaming and continuous batching on one node, through the node's own HTTP API.

    python -m bench.node_serving [--streams 1,4,8] [--rounds 3] [--tokens 64] [--prefill-tokens 64] [--json]

A node serving SmolLM2 runs as its own process (`node.app.serve`, no chain: the
signing domain is a dummy one) on 127.0.0.1; this process is only the clients.
For each stream count c, c closed-loop clients each send two streamed
`/v1/execute` jobs back to back (a ~30-token chat prompt, `max_tokens`
tokens, temperature 0.7, no stop: every job generates exactly that many
tokens). Printed per c (medians over `--rounds` rounds):

- aggregate generated tokens/s (every stream's tokens over the phase's wall time, so the
  streams' prefill counts against it) and aggregate decode tokens/s (the sum over the
  streams of each job's own decode rate: tokens after its first over the time they took);
- time to first token (request sent -> first token event) p50 / p95;
- inter-token latency (gap between consecutive token events of a stream) p50 / p95.

Then a stall phase: 4 streams decode while a newcomer with a ~400-token prompt
joins; printed: the running streams' longest inter-token gap while the newcomer
is prefilled, next to the bound (one pass of max_batch + prefill_tokens rows).

Target (issue 16/18): 8 streams >= 3x the aggregate decode of one stream (the decode column).
The coordinator's streaming figures (time to first token through the API) are
bench/serving.py's; this bench is the node alone. The machine is shared and
noisy: quote the medians, and run it more than once.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import httpx

from bench.common import verdict
from opinfer.chain.anvil import dev_keys, free_port

MODEL = "smollm2-135m-instruct"
PROMPT = ("You are a careful assistant. Explain in a few sentences why the sky looks blue on a clear "
          "day, for a curious child")


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class NodeProcess:
    def __init__(self, prefill_tokens: int, max_batch: int = 8):
        self.port = free_port()
        env = dict(os.environ, OPINFER_NODE_KEY=dev_keys(1)[0], OPINFER_NODE_CHAIN_ID="31337",
                   OPINFER_NODE_ROLLUP_ADDRESS="0x" + "11" * 20, OPINFER_NODE_MODELS=f"{MODEL}=2",
                   OPINFER_NODE_PORT=str(self.port), OPINFER_NODE_PREFILL_TOKENS=str(prefill_tokens),
                   OPINFER_NODE_MAX_BATCH=str(max_batch), OPINFER_NODE_LOG_LEVEL="warning")
        self.proc = subprocess.Popen([sys.executable, "-c", "from node.app import serve; serve()"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the node exited: " + self.proc.stderr.read().decode()[-2000:])
            try:
                self.health = httpx.get(self.url + "/healthz", timeout=1).json()
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the node did not start within 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def job_body(tok, prompt_ids, max_tokens: int, job: int, seed: int) -> dict:
    from opinfer.semantics.jobinput import JobInput

    data = JobInput(tuple(prompt_ids), max_tokens=max_tokens, temperature_milli=700, seed=seed).to_bytes()
    return {"job_id": "0x" + job.to_bytes(16, "big").hex(), "model": MODEL, "model_id": 2,
            "input": "0x" + data.hex(), "stream": True}


def stream(client: httpx.Client, url: str, body: dict) -> tuple[float, list[float]]:
    """(send time, token event times) of one streamed job; raises unless it ends with "done"."""
    sent = time.perf_counter()
    times, last = [], None
    with client.stream("POST", url + "/v1/execute", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line[6:])
                if last["type"] == "token":
                    times.append(time.perf_counter())
    if not last or last["type"] != "done":
        raise RuntimeError(f"stream ended without done: {last}")
    return sent, times


_ids = iter(range(1, 1 << 30))


def phase(url: str, tok, prompt, streams: int, tokens: int, jobs_each: int = 2) -> dict:
    results, errors = [], []
    lock = threading.Lock()

    def client(n: int):
        with httpx.Client(timeout=300) as c:
            for j in range(jobs_each):
                try:
                    with lock:
                        job = next(_ids)
                    r = stream(c, url, job_body(tok, prompt, tokens, job, seed=job))
                    with lock:
                        results.append(r)
                except Exception as exc:  # noqa: BLE001
                    errors.append(str(exc))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [times[0] - sent for sent, times in results if times]
    itl = [b - a for _, times in results for a, b in zip(times, times[1:])]
    n_tok = sum(len(times) for _, times in results)
    # each job's own decode rate (tokens after its first over the time they took, stalls for the
    # others' prefill included); the sum over the streams running at once is the aggregate decode
    rates = [(len(times) - 1) / (times[-1] - times[0]) for _, times in results if len(times) > 1]
    return {"tokens_per_s": n_tok / wall, "decode_tokens_per_s": streams * statistics.mean(rates) if rates else 0.0,
            "ttft_ms": [x * 1000 for x in ttft], "itl_ms": [x * 1000 for x in itl], "errors": errors}


def stall(url: str, tok, prompt, tokens: int) -> dict:
    """4 streams decode; a newcomer with a long prompt joins: the running streams' longest gap."""
    long_prompt = (tok.encode(" ".join(["The river ran past the old mill and the children watched it."] * 30)))[:400]
    runs: dict = {}

    def run(name, prompt_ids, n):
        with httpx.Client(timeout=300) as c:
            runs[name] = stream(c, url, job_body(tok, prompt_ids, n, next(_ids), seed=1))

    threads = [threading.Thread(target=run, args=(f"r{i}", prompt, tokens * 2)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    joined = time.perf_counter()
    run("new", long_prompt, 4)
    for t in threads:
        t.join()
    first_new = runs["new"][1][0]
    gaps = [b - a for name, (_, times) in runs.items() if name != "new"
            for a, b in zip(times, times[1:]) if b >= joined and a <= first_new]
    return {"prompt_tokens": len(long_prompt), "newcomer_ttft_ms": (first_new - joined) * 1000,
            "max_gap_ms": max(gaps) * 1000 if gaps else None}


def compute(stream_counts=(1, 4, 8), rounds: int = 3, tokens: int = 64, prefill_tokens: int = 64) -> dict:
    from opinfer.models.smollm2.tokenizer import load_tokenizer

    tok = load_tokenizer()
    prompt = tok.encode_chat([{"role": "user", "content": PROMPT}])
    node = NodeProcess(prefill_tokens)
    try:
        with httpx.Client(timeout=300) as c:          # warm-up: the engine's first pass
            stream(c, node.url, job_body(tok, prompt, 4, next(_ids), seed=0))
        per = {c: [] for c in stream_counts}
        for _ in range(rounds):
            for c in stream_counts:
                per[c].append(phase(node.url, tok, prompt, c, tokens))
        stalls = [stall(node.url, tok, prompt, tokens) for _ in range(rounds)]
    finally:
        node.stop()
    out = {"prompt_tokens": len(prompt), "max_tokens": tokens, "rounds": rounds, "max_batch": 8,
           "prefill_tokens": prefill_tokens or None, "streams": {}}
    for c, runs in per.items():
        med = lambda key, q: statistics.median(pct(r[key], q) for r in runs)  # noqa: E731
        out["streams"][str(c)] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "tokens_per_s_rounds": [round(r["tokens_per_s"], 1) for r in runs],
            "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
            "decode_tokens_per_s_rounds": [round(r["decode_tokens_per_s"], 1) for r in runs],
            "ttft_ms_p50": med("ttft_ms", 0.5), "ttft_ms_p95": med("ttft_ms", 0.95),
            "itl_ms_p50": med("itl_ms", 0.5), "itl_ms_p95": med("itl_ms", 0.95),
            "errors": sum(len(r["errors"]) for r in runs)}
    one = out["streams"].get("1")
    if one:
        for c in out["streams"].values():
            c["x_one_stream"] = c["tokens_per_s"] / one["tokens_per_s"]
            c["decode_x_one_stream"] = c["decode_tokens_per_s"] / one["decode_tokens_per_s"]
    eight = out["streams"].get("8")
    x8 = eight["decode_x_one_stream"] if eight and one else None
    out["decode_scaling"] = {"x8_over_1": x8, "target": 3.0, "meets_target": bool(x8 and x8 >= 3.0)}
    gaps = [s["max_gap_ms"] for s in stalls if s["max_gap_ms"] is not None]
    out["stall"] = {"newcomer_prompt_tokens": stalls[0]["prompt_tokens"],
                    "max_gap_ms_median": statistics.median(gaps) if gaps else None,
                    "newcomer_ttft_ms_median": statistics.median(s["newcomer_ttft_ms"] for s in stalls),
                    "bound_rows": (8 + prefill_tokens) if prefill_tokens else None}
    return out


def report(r: dict) -> None:
    print(f"node serving SmolLM2 (own process), prompt {r['prompt_tokens']} tokens, {r['max_tokens']} generated "
          f"per job, max_batch {r['max_batch']}, prefill_tokens {r['prefill_tokens']}; medians of {r['rounds']} "
          f"rounds")
    print(f"{'streams':>8} {'tok/s':>7} {'x1':>5} {'decode':>7} {'x1':>5} {'ttft p50':>9} {'p95':>6} "
          f"{'itl p50':>8} {'p95':>6}  decode tok/s per round")
    for c, s in r["streams"].items():
        print(f"{c:>8} {s['tokens_per_s']:7.1f} {s.get('x_one_stream', 0):5.2f} {s['decode_tokens_per_s']:7.1f} "
              f"{s.get('decode_x_one_stream', 0):5.2f} {s['ttft_ms_p50']:9.0f} {s['ttft_ms_p95']:6.0f} "
              f"{s['itl_ms_p50']:8.1f} {s['itl_ms_p95']:6.1f}  {s['decode_tokens_per_s_rounds']}"
              + (f"  errors {s['errors']}" if s["errors"] else ""))
    print("tok/s: every generated token over the phase's wall time (the streams' prefill included); decode: the "
          "sum of the streams' own decode rates")
    d = r["decode_scaling"]
    if d["x8_over_1"] is not None:
        print(f"aggregate decode, 8 streams / 1 stream: {d['x8_over_1']:.2f}x "
              f"(target >= 3x: {verdict(d['meets_target'])})")
    s = r["stall"]
    print(f"stall: a {s['newcomer_prompt_tokens']}-token prompt joining 4 running streams: their longest gap "
          f"{s['max_gap_ms_median']:.0f} ms (bound: one pass of {s['bound_rows'] or 'the whole prompt +'} rows), "
          f"the newcomer's first token after {s['newcomer_ttft_ms_median']:.0f} ms")


def main(argv=None) -> int:
    import argparse

    from bench.common import run

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=64)
    args, rest = parser.parse_known_args(argv)
    counts = tuple(int(x) for x in args.streams.split(","))
    return run(rest, __doc__, lambda: compute(counts, args.rounds, args.tokens, args.prefill_tokens), report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
