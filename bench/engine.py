"""Speed and memory of the integer engine against the float reference of the
same weights, measured side by side in one run.

    python -m bench.engine [--json]

MiniLM: a 128-token forward (target: integer at most 2x the float time).
SmolLM2: decode tokens/s with a KV cache after a 40-token prompt of held-out
prose, best of 3 alternating rounds of 32 steps (target: integer at least
0.75x the float reference). Peak memory is the tracemalloc
peak of one forward or decode step (numpy allocations).
"""

from __future__ import annotations

import sys
import time
import tracemalloc

from bench.common import run, verdict
from opinfer.engine import minilm_weights as fw
from opinfer.engine.minilm import IntMiniLM


def _best_ms(fn, repeat: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def _peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def minilm(repeat: int = 10) -> dict:
    model = IntMiniLM.build()
    ids = fw.encode(" ".join(["token"] * 126))
    assert len(ids) == 128
    int_ms = _best_ms(lambda: model.forward(ids), repeat)
    ref_ms = _best_ms(lambda: fw.reference_forward(ids), repeat)
    return {"tokens": 128, "integer_ms": round(int_ms, 2), "float_ms": round(ref_ms, 2),
            "ratio_integer_over_float": round(int_ms / ref_ms, 2), "target_ratio": 2.0,
            "meets_target": int_ms / ref_ms <= 2.0,
            "integer_peak_mb": round(_peak_mb(lambda: model.forward(ids)), 1),
            "float_peak_mb": round(_peak_mb(lambda: fw.reference_forward(ids)), 1)}


def smollm2(steps: int = 32, rounds: int = 3) -> dict:
    from bench.corpus import PROSE
    from opinfer.engine.bpe_tokenizer import load_tokenizer
    from opinfer.engine.smollm2 import IntSmolLM2
    from opinfer.engine.smollm2_reference import SmolLM2Reference

    # Real text, so activations (and the integer engine's exact block choice) are typical:
    # a 40-token prompt, then the next tokens fed one at a time.
    text = load_tokenizer().encode(PROSE)
    prompt, feed = text[:40], text[40:41 + steps]
    model, ref = IntSmolLM2.build(), SmolLM2Reference(max_ctx=256)

    def decode_rate(prefill, step) -> float:
        prefill(prompt)
        step(feed[0])  # warm up
        t = time.perf_counter()
        for token in feed[1:]:
            step(token)
        return steps / (time.perf_counter() - t)

    def int_rate() -> float:
        session = model.session(256)
        return decode_rate(session.forward, lambda token: session.forward([token]))

    # Alternating rounds, best of each: both engines see the same machine load.
    int_rates, ref_rates = [], []
    for _ in range(rounds):
        int_rates.append(int_rate())
        ref_rates.append(decode_rate(ref.prefill, ref.step))
    int_rate_, ref_rate = max(int_rates), max(ref_rates)
    session = model.session(256)
    session.forward(prompt)
    int_peak = _peak_mb(lambda: session.forward([feed[0]]))
    ref.prefill(prompt)
    ref_peak = _peak_mb(lambda: ref.step(feed[0]))
    return {"integer_tokens_per_s": round(int_rate_, 1), "float_tokens_per_s": round(ref_rate, 1),
            "ratio_integer_over_float": round(int_rate_ / ref_rate, 2), "target_ratio": 0.75,
            "meets_target": int_rate_ / ref_rate >= 0.75, "steps": steps, "rounds": rounds,
            "integer_step_peak_mb": round(int_peak, 1), "float_step_peak_mb": round(ref_peak, 1)}


def report(result: dict) -> None:
    m = result["minilm"]
    print(f"all-MiniLM-L6-v2, {m['tokens']}-token forward (best of 10):")
    print(f"  integer {m['integer_ms']} ms, float32 reference {m['float_ms']} ms: ratio "
          f"{m['ratio_integer_over_float']} (target <= {m['target_ratio']}: {verdict(m['meets_target'])})")
    print(f"  peak memory of one forward: integer {m['integer_peak_mb']} MiB, float {m['float_peak_mb']} MiB")
    s = result["smollm2"]
    print(f"SmolLM2-135M-Instruct decode with a KV cache (best of {s['rounds']} alternating rounds of "
          f"{s['steps']} steps):")
    print(f"  integer {s['integer_tokens_per_s']} tokens/s, float32 reference {s['float_tokens_per_s']} tokens/s: "
          f"ratio {s['ratio_integer_over_float']} (target >= {s['target_ratio']}: {verdict(s['meets_target'])})")
    print(f"  peak memory of one decode step: integer {s['integer_step_peak_mb']} MiB, "
          f"float {s['float_step_peak_mb']} MiB")


def main(argv=None) -> int:
    return run(argv, __doc__, lambda: {"minilm": minilm(), "smollm2": smollm2()}, report)


if __name__ == "__main__":
    sys.exit(main())
