"""Fidelity of the integer engine against the float reference of the same
weights, measured side by side in one run.

    python -m bench.fidelity [--json]

MiniLM: cosine between the integer and float embeddings over 50 held-out
sentences (target: mean >= 0.99).
"""

from __future__ import annotations

import sys

import numpy as np

from bench.common import run, verdict
from bench.corpus import SENTENCES
from opinfer.engine import minilm_weights as fw
from opinfer.engine.minilm import IntMiniLM, to_float


def minilm() -> dict:
    model = IntMiniLM.build()
    cosines = []
    for text in SENTENCES:
        ids = fw.encode(text)
        a, b = to_float(model.forward(ids)), fw.reference_forward(ids)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return {"sentences": len(cosines), "mean_cosine": round(float(np.mean(cosines)), 5),
            "min_cosine": round(float(np.min(cosines)), 5), "target_mean": 0.99,
            "meets_target": bool(np.mean(cosines) >= 0.99)}


def report(result: dict) -> None:
    m = result["minilm"]
    print(f"all-MiniLM-L6-v2, integer vs float32 reference, {m['sentences']} held-out sentences:")
    print(f"  mean cosine {m['mean_cosine']}  (min {m['min_cosine']}, target >= {m['target_mean']}: "
          f"{verdict(m['meets_target'])})")


def main(argv=None) -> int:
    return run(argv, __doc__, lambda: {"minilm": minilm()}, report)


if __name__ == "__main__":
    sys.exit(main())
