"""How much of the network one challenger can re-execute, measured side by
side on this machine.

    python -m bench.challenger [--nodes 3] [--chat-share 0.5] [--json]

Production: each node runs a job the way node/engines.py does (one job at a
time, fast engine). Re-execution: the challenger's executors, which run a
batch's sampled leaves per model in one stacked pass (the same bits). With
`--nodes` nodes each busy all the time on a machine like this one (the
worst case for the challenger), the network produces

    P = nodes / (s * t_node_chat + (1 - s) * t_node_embed)   jobs/s

(s = share of chat jobs), and one challenger checking a share r of them
spends r * P * (s * t_chk_chat + (1 - s) * t_chk_embed) seconds per second,
so the highest sustainable sample rate is

    r* = min(1, 1 / (P * (s * t_chk_chat + (1 - s) * t_chk_embed))).

Target: r* >= 0.05 (docs/security.md: the rate that, with a fraud record
forcing full checks, makes cheating unprofitable at the default stake).
Dispute traces are not on this path: they are built only for wrong leaves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from challenger.executors import ModelExecutor
from opinfer import models as registry
from opinfer.semantics.jobinput import JobInput

TARGET_RATE = 0.05


def embed_jobs(n: int, tokens: int, rng) -> list[JobInput]:
    return [JobInput((101,) + tuple(int(t) for t in rng.integers(1000, 29000, size=tokens - 2)) + (102,))
            for _ in range(n)]


def chat_jobs(n: int, prompt: int, max_tokens: int, rng, vocab: int) -> list[JobInput]:
    return [JobInput(tuple(int(t) for t in rng.integers(0, vocab, size=prompt)), max_tokens=max_tokens)
            for _ in range(n)]


def per_job(fn, jobs) -> float:
    start = time.perf_counter()
    fn(jobs)
    return (time.perf_counter() - start) / len(jobs)


def measure(args) -> dict:
    from node.engines import Engine

    rng = np.random.default_rng(7)
    out = {}
    models = (("all-minilm-l6-v2", embed_jobs(args.embed_jobs, args.embed_tokens, rng)),
              ("smollm2-135m-instruct", chat_jobs(args.chat_jobs, args.chat_prompt, args.chat_max_tokens, rng,
                                                        registry.get("smollm2-135m-instruct").vocab)))
    for name, jobs in models:
        engine = Engine(registry.get(name)).load()
        executor = ModelExecutor(registry.get(name), engine=engine.engine)  # one copy of the weights for both sides
        engine.run(jobs[0])
        executor.output_roots(jobs[:2])  # warm up both paths
        node = per_job(lambda js: [engine.run(j) for j in js], jobs)
        single = per_job(lambda js: [executor.output_root(j) for j in js], jobs)
        batched = min(per_job(executor.output_roots, jobs) for _ in range(2))
        out[name] = {"jobs": len(jobs), "node_s_per_job": node, "check_s_per_job_single": single,
                     "check_s_per_job_batched": batched, "batching_speedup": single / batched,
                     "node_jobs_per_s": 1 / node, "check_jobs_per_s": 1 / batched}
        del engine, executor
    s = args.chat_share
    e, c = out["all-minilm-l6-v2"], out["smollm2-135m-instruct"]
    production = args.nodes / (s * c["node_s_per_job"] + (1 - s) * e["node_s_per_job"])
    check = s * c["check_s_per_job_batched"] + (1 - s) * e["check_s_per_job_batched"]
    rate = min(1.0, 1 / (production * check))
    out["network"] = {"nodes": args.nodes, "chat_share": s, "jobs_per_s": production,
                      "challenger_jobs_per_s": 1 / check, "max_sample_rate": rate,
                      "target_rate": TARGET_RATE, "meets_target": rate >= TARGET_RATE}
    for name in ("all-minilm-l6-v2", "smollm2-135m-instruct"):
        m = out[name]
        m["max_sample_rate_alone"] = min(1.0, m["check_jobs_per_s"] / (args.nodes * m["node_jobs_per_s"]))
    return out


def report(r: dict) -> None:
    n = r["network"]
    print(f"challenger re-execution vs job production ({n['nodes']} nodes busy all the time, this machine)")
    print(f"{'model':<24}{'node ms/job':>12}{'check ms/job':>14}{'batched':>10}{'speedup':>9}{'max rate':>10}")
    for name in ("all-minilm-l6-v2", "smollm2-135m-instruct"):
        m = r[name]
        print(f"{name:<24}{m['node_s_per_job'] * 1e3:>12.1f}{m['check_s_per_job_single'] * 1e3:>14.1f}"
              f"{m['check_s_per_job_batched'] * 1e3:>10.1f}{m['batching_speedup']:>8.1f}x"
              f"{m['max_sample_rate_alone']:>10.3f}")
    print(f"mix ({n['chat_share']:.0%} chat): network {n['jobs_per_s']:.1f} jobs/s, one challenger checks "
          f"{n['challenger_jobs_per_s']:.1f} jobs/s")
    print(f"highest sustainable sample rate: {n['max_sample_rate']:.3f} "
          f"(target >= {n['target_rate']}: {'met' if n['meets_target'] else 'MISSED'})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--nodes", type=int, default=3, help="nodes producing jobs (default 3, as the devnet)")
    p.add_argument("--chat-share", type=float, default=0.5, help="share of chat jobs (default 0.5)")
    p.add_argument("--embed-jobs", type=int, default=64)
    p.add_argument("--embed-tokens", type=int, default=16, help="tokens per embedding job, CLS/SEP included")
    p.add_argument("--chat-jobs", type=int, default=8)
    p.add_argument("--chat-prompt", type=int, default=24, help="prompt tokens per chat job")
    p.add_argument("--chat-max-tokens", type=int, default=8, help="generated tokens per chat job")
    args = p.parse_args(argv)
    result = measure(args)
    print(json.dumps(result)) if args.json else report(result)
    return 0 if result["network"]["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
