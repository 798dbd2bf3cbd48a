"""Speed and memory of the integer engine against the float reference of the
same weights, measured side by side in one run.

    python -m bench.engine [--json]

MiniLM: a 128-token forward (target: integer at most 2x the float time).
Peak memory is the tracemalloc peak of one forward (numpy allocations).
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


def report(result: dict) -> None:
    m = result["minilm"]
    print(f"all-MiniLM-L6-v2, {m['tokens']}-token forward (best of 10):")
    print(f"  integer {m['integer_ms']} ms, float32 reference {m['float_ms']} ms: ratio "
          f"{m['ratio_integer_over_float']} (target <= {m['target_ratio']}: {verdict(m['meets_target'])})")
    print(f"  peak memory of one forward: integer {m['integer_peak_mb']} MiB, float {m['float_peak_mb']} MiB")


def main(argv=None) -> int:
    return run(argv, __doc__, lambda: {"minilm": minilm()}, report)


if __name__ == "__main__":
    sys.exit(main())
