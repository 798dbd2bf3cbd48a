"""Speed and memory of the integer engines beside llama.cpp (SmolLM2, the same GGUF file)
and onnxruntime (MiniLM, the same weights), measured side by side in one run.

    python -m bench.engine [--json] [--runs N]

`make bench-deps` builds llama.cpp (llama-bench, llama-server) from the sources in the
llama-cpp-python sdist and installs onnxruntime; without them the bench says so and
reports our figures alone. Every figure is the median of N runs (default 5), the
engines alternating, on 2 threads:

- SmolLM2 decode, batch 1: tokens/s after a 16-token prompt, 64 steps; llama-bench's
  tg64 (target: ours / llama.cpp >= 0.5, stretch 1.0); and the float32 numpy reference.
- SmolLM2 prefill of 256 tokens: tokens/s; llama-bench's pp256 (target >= 0.5).
- 8 concurrent sequences: aggregate decode tokens/s over one sequence's (target >= 3).
- MiniLM, a 128-token forward: ours / onnxruntime fp32 time (target <= 1.5).
- Memory: peak RSS of a process serving SmolLM2 as a node does (node.engines.ChatEngine)
  with 4 concurrent sequences, each prompt ~300 tokens and 200 new tokens, against
  llama-server with a 4,096-position context and 4 slots serving the same requests
  (target <= 2x); and each one's start-up time to its first answer. Then the full size:
  4 sequences whose KV caches hold 4,096 positions each (ours allocated and written;
  llama-server -c 16384 -np 4, 4,096 per slot).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.common import verdict

LLAMA_BIN = Path(__file__).resolve().parent / "llama.cpp" / "bin"
# onnxruntime and onnx live in their own folder (make bench-deps), so the project's pinned
# environment is unchanged.
PYDEPS = Path(__file__).resolve().parent / ".pydeps"
if PYDEPS.is_dir() and str(PYDEPS) not in sys.path:
    sys.path.append(str(PYDEPS))
THREADS = 2


def _median(xs) -> float:
    return float(statistics.median(xs))


def _gguf() -> str:
    from opinfer.models.smollm2.gguf import find_gguf_path

    return str(find_gguf_path())


# ---------------------------------------------------------------- llama.cpp

def llama_bench(runs: int = 1) -> dict:
    """llama-bench's pp256 and tg64 on 2 threads (medians of its samples)."""
    binary = LLAMA_BIN / "llama-bench"
    if not binary.exists():
        return {"llama_cpp": "missing: run `make bench-deps` to build llama.cpp"}
    out = subprocess.run([str(binary), "-m", _gguf(), "-p", "256", "-n", "64", "-t", str(THREADS), "-r", str(runs),
                          "-o", "json"], capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        return {"llama_cpp": f"llama-bench failed: {out.stderr[-300:]}"}
    rows = json.loads(out.stdout)
    res = {"llama_cpp": "built"}
    for row in rows:
        key = "llama_prefill_tokens_per_s" if row["n_prompt"] else "llama_decode_tokens_per_s"
        res[key] = round(_median(row["samples_ts"]), 1)
    return res


# ---------------------------------------------------------------- ours

def smollm2_speed(runs: int) -> dict:
    from bench.corpus import PROSE
    from opinfer import native
    from opinfer.models.smollm2.engine import default_model, forward_many
    from opinfer.models.smollm2.tokenizer import load_tokenizer

    native.set_threads(THREADS)
    text = load_tokenizer().encode(PROSE * 4)
    model = default_model()

    def decode() -> float:
        s = model.session(512)
        s.forward(text[:16])
        token, t = text[16], time.perf_counter()
        for i in range(64):
            token = int(np.argmax(s.forward([token])))
        return 64 / (time.perf_counter() - t)

    def prefill() -> float:
        s = model.session(512)
        t = time.perf_counter()
        s.forward(text[:256])
        return 256 / (time.perf_counter() - t)

    def batch(n: int) -> float:
        sessions = [model.session(512) for _ in range(n)]
        forward_many(sessions, [text[i:i + 16] for i in range(n)])
        tokens, t = [[text[16 + i]] for i in range(n)], time.perf_counter()
        for _ in range(32):
            tokens = [[int(np.argmax(z))] for z in forward_many(sessions, tokens)]
        return 32 * n / (time.perf_counter() - t)

    decode()                                             # warm up (library, caches)
    # Rounds alternate ours and llama-bench (one repetition each), so that both see the
    # same load on a shared machine; the ratios are taken per round, then their median.
    d, p, b1, b8, ld, lp = [], [], [], [], [], []
    llama: dict = {}
    for _ in range(runs):
        d.append(decode())
        p.append(prefill())
        llama = llama_bench(1)
        if "llama_decode_tokens_per_s" in llama:
            ld.append(llama["llama_decode_tokens_per_s"])
            lp.append(llama["llama_prefill_tokens_per_s"])
        b1.append(batch(1))
        b8.append(batch(8))
    out = {"decode_tokens_per_s": round(_median(d), 1), "prefill_tokens_per_s": round(_median(p), 1),
           "one_sequence_tokens_per_s": round(_median(b1), 1), "eight_sequences_tokens_per_s": round(_median(b8), 1),
           "batch8_over_one": round(_median([e / o for e, o in zip(b8, b1)]), 2),
           "decode_runs": [round(x, 1) for x in d], "prefill_runs": [round(x, 1) for x in p],
           "llama_cpp": llama.get("llama_cpp")}
    if ld:
        out.update({"llama_decode_tokens_per_s": round(_median(ld), 1), "llama_prefill_tokens_per_s": round(_median(lp), 1),
                    "llama_decode_runs": ld, "llama_prefill_runs": lp,
                    "decode_ours_over_llama": round(_median([a / b for a, b in zip(d, ld)]), 2),
                    "prefill_ours_over_llama": round(_median([a / b for a, b in zip(p, lp)]), 2)})
    return out


def float_reference_decode(runs: int) -> float:
    from bench.corpus import PROSE
    from opinfer.models.smollm2.reference import SmolLM2Reference
    from opinfer.models.smollm2.tokenizer import load_tokenizer

    text = load_tokenizer().encode(PROSE)
    ref = SmolLM2Reference(max_ctx=256)
    rates = []
    for _ in range(max(1, runs // 2)):
        ref.prefill(text[:16])
        t = time.perf_counter()
        for token in text[16:48]:
            ref.step(token)
        rates.append(32 / (time.perf_counter() - t))
    return round(_median(rates), 1)


# ---------------------------------------------------------------- MiniLM

def minilm(runs: int) -> dict:
    from opinfer.models.minilm import weights as fw
    from opinfer.models.minilm.engine import IntMiniLM

    model = IntMiniLM.build()
    ids = fw.encode(" ".join(["token"] * 126))
    assert len(ids) == 128
    model.forward(ids)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000

    try:
        session = onnx_minilm()
    except ImportError:
        ours = _median([timed(lambda: model.forward(ids)) for _ in range(max(runs, 10))])
        return {"tokens": 128, "integer_ms": round(ours, 2),
                "onnxruntime": "missing: run `make bench-deps` to install onnxruntime and onnx"}
    feed = {"ids": ids.reshape(1, -1).astype(np.int64)}
    session.run(None, feed)
    mine, theirs = [], []
    for _ in range(max(runs, 10)):                       # alternating: the same machine load for both
        mine.append(timed(lambda: model.forward(ids)))
        theirs.append(timed(lambda: session.run(None, feed)))
    ours, ort = _median(mine), _median(theirs)
    ratio = _median([a / b for a, b in zip(mine, theirs)])
    vec = session.run(None, feed)[0][0]
    ref = fw.reference_forward(ids)
    return {"tokens": 128, "integer_ms": round(ours, 2), "onnxruntime": "installed", "onnxruntime_ms": round(ort, 2),
            "ratio_integer_over_onnxruntime": round(ratio, 2), "target_ratio": 1.5, "meets_target": ratio <= 1.5,
            "onnx_cosine_to_reference": round(float(vec @ ref / np.linalg.norm(vec) / np.linalg.norm(ref)), 6)}


def onnx_minilm():
    """all-MiniLM-L6-v2 (BERT, mean pooling, L2 norm) as an fp32 ONNX graph built from the
    package's safetensors (what sentence-transformers' ONNX export runs), in onnxruntime
    with 2 threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from opinfer.models.minilm import weights as fw

    config, w = fw.load()
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    H, D, L = config.heads, config.head_dim, config.layers
    emb = node("Gather", [const("word", w["embeddings.word_embeddings.weight"]), "ids"], "e0")
    pos = node("Slice", [const("pos", w["embeddings.position_embeddings.weight"]), const("zero", np.array([0])),
                         node("Shape", ["ids"], "shape", start=1), const("axis0", np.array([0]))], "p0")
    x = node("Add", [node("Add", [emb, pos], "e1"), const("typ", w["embeddings.token_type_embeddings.weight"][0])], "e2")

    def ln(x, p, out):
        return node("LayerNormalization", [x, const(p + "w", w[p + ".weight"]), const(p + "b", w[p + ".bias"])], out,
                    axis=-1, epsilon=config.eps)

    def dense(x, p, out):
        mm = node("MatMul", [x, const(p + "wt", np.ascontiguousarray(w[p + ".weight"].T))], out + "_mm")
        return node("Add", [mm, const(p + "bias", w[p + ".bias"])], out)

    x = ln(x, "embeddings.LayerNorm", "x0")
    heads = const("heads", np.array([1, -1, H, D]))
    merge = const("merge", np.array([1, -1, H * D]))
    scale = const("scale", np.array(1 / np.sqrt(D), dtype=np.float32))
    for i in range(L):
        p = f"encoder.layer.{i}."
        q, k, v = (node("Transpose", [node("Reshape", [dense(x, p + f"attention.self.{n}", f"{n}{i}"), heads],
                                           f"{n}{i}r")], f"{n}{i}t", perm=[0, 2, 1, 3]) for n in ("query", "key", "value"))
        kt = node("Transpose", [k], f"kt{i}", perm=[0, 1, 3, 2])
        s = node("Mul", [node("MatMul", [q, kt], f"s{i}"), scale], f"ss{i}")
        ctx = node("MatMul", [node("Softmax", [s], f"pr{i}", axis=-1), v], f"c{i}")
        ctx = node("Reshape", [node("Transpose", [ctx], f"ct{i}", perm=[0, 2, 1, 3]), merge], f"cr{i}")
        x = ln(node("Add", [dense(ctx, p + "attention.output.dense", f"ao{i}"), x], f"r1{i}"),
               p + "attention.output.LayerNorm", f"x1{i}")
        up = dense(x, p + "intermediate.dense", f"up{i}")
        gelu = node("Mul", [node("Mul", [up, node("Add", [node("Erf", [node("Div", [up, const(f"sq{i}", np.array(
            np.sqrt(2), dtype=np.float32))], f"ud{i}")], f"erf{i}"), const(f"one{i}", np.array(1, dtype=np.float32))],
            f"ea{i}")], f"gm{i}"), const(f"half{i}", np.array(0.5, dtype=np.float32))], f"g{i}")
        x = ln(node("Add", [dense(gelu, p + "output.dense", f"dn{i}"), x], f"r2{i}"), p + "output.LayerNorm", f"x{i + 1}")
    pooled = node("ReduceMean", [x], "pool", axes=[1], keepdims=0)
    node("LpNormalization", [pooled], "emb", axis=-1, p=2)
    graph = helper.make_graph(nodes, "minilm", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, H * D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- memory and start-up

SERVE_SCRIPT = """
import json, sys, time, threading
t0 = time.time()
from node import engines
from opinfer.models.smollm2.engine import generate_sessions
from opinfer.semantics.jobinput import JobInput
engine = engines.load("smollm2-135m-instruct")
jobs = [JobInput(tuple(json.loads(sys.argv[1])[i]), max_tokens=int(sys.argv[2])) for i in range(4)]
first = engine.run(JobInput(jobs[0].tokens[:8], max_tokens=1))
started = time.time() - t0
ctx = int(sys.argv[3])
if ctx:
    # every sequence's KV cache at the full context, every page written (as llama.cpp clears its
    # KV buffer at start-up): the worst case of 4 sequences that each reach ctx positions
    sessions = [engine.engine.session(ctx) for _ in jobs]
    for s in sessions:
        s.reserve(ctx)
        s.k.fill(1)
        s.v.fill(1)
    generate_sessions(sessions, [dict(ids=list(j.tokens), max_tokens=j.max_tokens) for j in jobs])
    kv = sum(s.k.nbytes + s.v.nbytes for s in sessions)
else:
    engine.run_many(jobs)
    kv = None
status = open('/proc/self/status').read()
hwm = int(status.split('VmHWM:')[1].split()[0]) / 1024
print(json.dumps({"peak_rss_mb": round(hwm, 1), "startup_s": round(started, 2), "kv_cache_mb": kv and round(kv / 2**20, 1)}))
"""


def _prompts(n: int = 4, length: int = 300) -> list[list[int]]:
    from bench.corpus import PROSE
    from opinfer.models.smollm2.tokenizer import load_tokenizer

    ids = load_tokenizer().encode(PROSE * 8)
    return [ids[i * 37:i * 37 + length] for i in range(n)]


def ours_memory(new_tokens: int = 200, ctx: int = 0) -> dict:
    """Peak RSS of a node's SmolLM2 engine serving the 4 requests; with ctx, 4 sessions whose KV
    caches hold ctx positions each (allocated and written) serve them."""
    env = dict(os.environ, OPINFER_THREADS=str(THREADS))
    out = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, json.dumps(_prompts()), str(new_tokens), str(ctx)],
                         capture_output=True, text=True, timeout=1800, env=env, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_server_memory(new_tokens: int = 200, ctx: int = 4096) -> dict:
    """llama-server with -c ctx -np 4 (its context is shared by the 4 slots: ctx 16,384 gives
    each sequence 4,096 positions) serving the same 4 requests: peak RSS, start-up."""
    binary = LLAMA_BIN / "llama-server"
    if not binary.exists():
        return {"llama_cpp": "missing: run `make bench-deps` to build llama.cpp"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    proc = subprocess.Popen([str(binary), "-m", _gguf(), "-c", str(ctx), "-np", "4", "-t", str(THREADS), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def complete(tokens, n):
        body = json.dumps({"prompt": tokens, "n_predict": n, "temperature": 0, "cache_prompt": False}).encode()
        req = urllib.request.Request(url + "/completion", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    try:
        prompts = _prompts()
        while True:
            try:
                complete(prompts[0][:8], 1)
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 120:
                    return {"llama_cpp": "llama-server did not start"}
                time.sleep(0.2)
        started = time.time() - t0
        threads = [threading.Thread(target=complete, args=(p, new_tokens)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
        return {"llama_cpp": "built", "llama_peak_rss_mb": round(hwm, 1), "llama_startup_s": round(started, 2)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------- the run

def compute(runs: int) -> dict:
    speed = smollm2_speed(runs)
    speed["float_reference_decode_tokens_per_s"] = float_reference_decode(runs)
    met = speed["batch8_over_one"] >= 3
    if "decode_ours_over_llama" in speed:
        met = met and speed["decode_ours_over_llama"] >= 0.5 and speed["prefill_ours_over_llama"] >= 0.5
    speed["meets_target"] = met
    memory = {**ours_memory(), **llama_server_memory()}
    if "llama_peak_rss_mb" in memory and "peak_rss_mb" in memory:
        memory["rss_ours_over_llama"] = round(memory["peak_rss_mb"] / memory["llama_peak_rss_mb"], 2)
        memory["meets_target"] = memory["rss_ours_over_llama"] <= 2.0
    # The 4,096-position context per sequence, both sides at full size: our 4 KV caches
    # allocated and written at 4,096 positions; llama-server -c 16384 -np 4 (4,096 per slot).
    full = ours_memory(ctx=4096)
    memory["ctx4096"] = {"peak_rss_mb": full.get("peak_rss_mb"), "kv_cache_mb": full.get("kv_cache_mb"),
                         "error": full.get("error")}
    lfull = llama_server_memory(ctx=4 * 4096)
    if "llama_peak_rss_mb" in lfull and full.get("peak_rss_mb"):
        memory["ctx4096"].update(llama_peak_rss_mb=lfull["llama_peak_rss_mb"],
                                 rss_ours_over_llama=round(full["peak_rss_mb"] / lfull["llama_peak_rss_mb"], 2))
        memory["meets_target"] = memory.get("meets_target", True) and memory["ctx4096"]["rss_ours_over_llama"] <= 2.0
    return {"smollm2": speed, "memory": memory, "minilm": minilm(runs), "threads": THREADS, "runs": runs}


def report(r: dict) -> None:
    s = r["smollm2"]
    print(f"SmolLM2-135M-Instruct, {r['threads']} threads, medians of {r['runs']} alternating rounds "
          f"(ratios: the median of each round's ratio):")
    llama = s.get("llama_cpp")
    if "llama_decode_tokens_per_s" in s:
        print(f"  decode, batch 1: ours {s['decode_tokens_per_s']} tokens/s, llama.cpp {s['llama_decode_tokens_per_s']}: "
              f"{s['decode_ours_over_llama']}x (target >= 0.5: {verdict(s['decode_ours_over_llama'] >= 0.5)})")
        print(f"  prefill 256: ours {s['prefill_tokens_per_s']} tokens/s, llama.cpp {s['llama_prefill_tokens_per_s']}: "
              f"{s['prefill_ours_over_llama']}x (target >= 0.5: {verdict(s['prefill_ours_over_llama'] >= 0.5)})")
    else:
        print(f"  llama.cpp {llama}")
        print(f"  decode, batch 1: ours {s['decode_tokens_per_s']} tokens/s; prefill 256: {s['prefill_tokens_per_s']}")
    print(f"  float32 numpy reference decode: {s['float_reference_decode_tokens_per_s']} tokens/s")
    print(f"  8 sequences: {s['eight_sequences_tokens_per_s']} tokens/s aggregate vs one {s['one_sequence_tokens_per_s']}: "
          f"{s['batch8_over_one']}x (target >= 3: {verdict(s['batch8_over_one'] >= 3)})")
    m = r["memory"]
    if "error" in m:
        print(f"  memory: {m['error']}")
    else:
        line = f"  serving 4 sequences: peak RSS ours {m['peak_rss_mb']} MB (start-up to first answer {m['startup_s']} s)"
        if "llama_peak_rss_mb" in m:
            line += (f", llama-server {m['llama_peak_rss_mb']} MB ({m['llama_startup_s']} s): {m['rss_ours_over_llama']}x "
                     f"(target <= 2: {verdict(m['meets_target'])})")
        print(line)
        f = m.get("ctx4096", {})
        if f.get("peak_rss_mb"):
            line = (f"  4 sequences at a 4,096-position context each (KV caches allocated and written, "
                    f"{f['kv_cache_mb']} MB): peak RSS ours {f['peak_rss_mb']} MB")
            if "llama_peak_rss_mb" in f:
                line += (f", llama-server -c 16384 -np 4 {f['llama_peak_rss_mb']} MB: {f['rss_ours_over_llama']}x "
                         f"(target <= 2: {verdict(f['rss_ours_over_llama'] <= 2)})")
            print(line)
    n = r["minilm"]
    if "onnxruntime_ms" in n:
        print(f"all-MiniLM-L6-v2, 128 tokens: ours {n['integer_ms']} ms, onnxruntime fp32 {n['onnxruntime_ms']} ms: "
              f"{n['ratio_integer_over_onnxruntime']}x (target <= 1.5: {verdict(n['meets_target'])})")
    else:
        print(f"all-MiniLM-L6-v2, 128 tokens: ours {n['integer_ms']} ms; onnxruntime {n['onnxruntime']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    result = compute(args.runs)
    print(json.dumps(result)) if args.json else report(result)
    return 0 if all(v.get("meets_target", True) for v in result.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
