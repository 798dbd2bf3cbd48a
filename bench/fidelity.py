"""Fidelity of the integer engine against the float reference of the same
weights, measured side by side in one run.

    python -m bench.fidelity [--json]

MiniLM: cosine between the integer and float embeddings over 50 held-out
sentences (target: mean >= 0.99). SmolLM2: top-1 next-token agreement over
2,000 positions of held-out text (Debian's copy of the Apache-2.0 licence,
never used for calibration; target >= 90%), and the greedy chat answer to
"What is the capital of France?" (target: names Paris).
"""

from __future__ import annotations

import sys
from pathlib import Path

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


HELD_OUT = Path("/usr/share/common-licenses/Apache-2.0")
POSITIONS = 2000


def smollm2() -> dict:
    from opinfer.engine.bpe_tokenizer import load_tokenizer
    from opinfer.engine.smollm2 import IntSmolLM2
    from opinfer.engine.smollm2_reference import SmolLM2Reference

    tok = load_tokenizer()
    if not HELD_OUT.exists():
        return {"error": f"{HELD_OUT} not found (Debian base-files)", "meets_target": False}
    ids = tok.encode(" ".join(HELD_OUT.read_text().split()))[: POSITIONS + 1]
    model = IntSmolLM2.build()
    int_top1 = model.session(len(ids)).forward(ids[:-1], all_logits=True).argmax(-1)
    ref_top1 = SmolLM2Reference(max_ctx=len(ids)).forward(ids[:-1], all_logits=True).argmax(-1)
    agreement = float(np.mean(int_top1 == ref_top1))
    chat = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = tok.decode(model.session().generate(chat, 20, stop_ids=[tok.eos_id]).ids)
    return {"positions": len(ref_top1), "top1_agreement": round(agreement, 4), "target": 0.9,
            "paris_answer": answer, "names_paris": "Paris" in answer,
            "meets_target": agreement >= 0.9 and "Paris" in answer}


def report(result: dict) -> None:
    m = result["minilm"]
    print(f"all-MiniLM-L6-v2, integer vs float32 reference, {m['sentences']} held-out sentences:")
    print(f"  mean cosine {m['mean_cosine']}  (min {m['min_cosine']}, target >= {m['target_mean']}: "
          f"{verdict(m['meets_target'])})")
    s = result["smollm2"]
    if "error" in s:
        print(f"SmolLM2: {s['error']}")
        return
    print(f"SmolLM2-135M-Instruct, integer vs float32 reference, {s['positions']} held-out positions:")
    print(f"  top-1 next-token agreement {s['top1_agreement']} (target >= {s['target']}: "
          f"{verdict(s['top1_agreement'] >= s['target'])})")
    print(f"  greedy answer to 'What is the capital of France?': {s['paris_answer']!r} "
          f"(names Paris: {verdict(s['names_paris'])})")


def main(argv=None) -> int:
    return run(argv, __doc__, lambda: {"minilm": minilm(), "smollm2": smollm2()}, report)


if __name__ == "__main__":
    sys.exit(main())
