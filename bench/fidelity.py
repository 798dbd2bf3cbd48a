"""Fidelity of the integer engines against float64 computations on the same weights,
measured side by side in one run.

    python -m bench.fidelity [--json]

SmolLM2 (its weights: the GGUF's blocks, dequantised exactly to float64):
- top-1 next-token agreement and mean KL(float64 || integer) over 2,000 positions of
  held-out text (Debian's copy of the Apache-2.0 licence; targets >= 96 % and <= 0.005);
- perplexity on text not written for this project (Python's own reference prose,
  `pydoc_data.topics`), computed as llama.cpp's `llama-perplexity` does (chunks of
  256 tokens, each scored on its second half, 12 chunks), beside llama-perplexity's own
  figure on the same file, text and context when `make bench-deps` has built it
  (target: within 1 %), and beside the float64 computation;
- the greedy chat answer to "What is the capital of France?" (names Paris).
MiniLM: cosine between the integer and float embeddings over 50 held-out sentences
(target: mean >= 0.995).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import run, verdict
from bench.corpus import SENTENCES
from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.engine import IntMiniLM, to_float

HELD_OUT = Path("/usr/share/common-licenses/Apache-2.0")
POSITIONS = 2000
PPL_CTX, PPL_CHUNKS = 256, 12
LLAMA_BIN = Path(__file__).resolve().parent / "llama.cpp" / "bin"


def minilm() -> dict:
    model = IntMiniLM.build()
    cosines = []
    for text in SENTENCES:
        ids = fw.encode(text)
        a, b = to_float(model.forward(ids)), fw.reference_forward(ids)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return {"sentences": len(cosines), "mean_cosine": round(float(np.mean(cosines)), 5),
            "min_cosine": round(float(np.min(cosines)), 5), "target_mean": 0.995,
            "meets_target": bool(np.mean(cosines) >= 0.995)}


class Float64SmolLM2:
    """llama.cpp's llama graph in float64 on the GGUF's dequantised weights (one sequence, no cache)."""

    def __init__(self):
        from opinfer.models.smollm2.gguf import load_weights

        w = load_weights()
        f = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
        self.w = w
        self.embed, self.out_norm = f(w.tok_embd), f(w.output_norm)
        self.layers = [{k: f(v) for k, v in vars(la).items()} for la in w.layers]

    def logits(self, ids) -> np.ndarray:
        return self.hidden(ids) @ self.embed.T

    def hidden(self, ids) -> np.ndarray:
        """The last RMSNorm's output for every position (logits = hidden . embed^T)."""
        w = self.w
        T, D, nh, nkv = len(ids), w.head_dim, w.n_heads, w.n_kv_heads
        norm = lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + w.rms_eps) * g  # noqa: E731
        inv = w.rope_theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)
        ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

        def rope(x):
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
            return out

        mask = np.triu(np.full((T, T), -np.inf), 1)
        x = self.embed[ids]
        for la in self.layers:
            h = norm(x, la["attn_norm"])
            q = rope((h @ la["wq"].T).reshape(T, nh, D))
            k = rope((h @ la["wk"].T).reshape(T, nkv, D))
            v = (h @ la["wv"].T).reshape(T, nkv, D)
            ctx = np.empty((T, nh, D))
            for hd in range(nh):
                g = hd // (nh // nkv)
                s = q[:, hd] @ k[:, g].T / np.sqrt(D) + mask
                p = np.exp(s - s.max(-1, keepdims=True))
                ctx[:, hd] = (p / p.sum(-1, keepdims=True)) @ v[:, g]
            x = x + ctx.reshape(T, nh * D) @ la["wo"].T
            h = norm(x, la["ffn_norm"])
            g = h @ la["w_gate"].T
            x = x + (g / (1 + np.exp(-g)) * (h @ la["w_up"].T)) @ la["w_down"].T
        return norm(x, self.out_norm)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _int_logprobs(logits: np.ndarray) -> np.ndarray:
    from opinfer.models.smollm2.engine import LOGIT_BITS

    return _log_softmax(np.asarray(logits, dtype=np.float64) / (1 << LOGIT_BITS))


def perplexity_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _chunk_nll(logprobs: np.ndarray, ids: list[int]) -> list[float]:
    """llama-perplexity's scoring of one chunk: the tokens of its second half."""
    first = PPL_CTX // 2
    return [-float(logprobs[i, ids[i + 1]]) for i in range(first, len(ids) - 1)]


def llama_perplexity(path: str, text: str) -> dict:
    binary = LLAMA_BIN / "llama-perplexity"
    if not binary.exists():
        return {"llama_cpp": "missing: run `make bench-deps` to build llama.cpp"}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    out = subprocess.run([str(binary), "-m", path, "-f", f.name, "-c", str(PPL_CTX), "--chunks", str(PPL_CHUNKS),
                          "-t", "2", "-b", str(PPL_CTX)], capture_output=True, text=True, timeout=900)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
    if not found:
        return {"llama_cpp": f"llama-perplexity failed: {(out.stderr or out.stdout)[-300:]}"}
    return {"llama_cpp": "built", "llama_ppl": float(found.group(1))}


def smollm2() -> dict:
    from opinfer.models.smollm2.engine import default_model
    from opinfer.models.smollm2.gguf import find_gguf_path
    from opinfer.models.smollm2.tokenizer import load_tokenizer

    tok = load_tokenizer()
    if not HELD_OUT.exists():
        return {"error": f"{HELD_OUT} not found (Debian base-files)", "meets_target": False}
    model, ref = default_model(), Float64SmolLM2()
    ids = tok.encode(" ".join(HELD_OUT.read_text().split()))[: POSITIONS + 1]
    ours = _int_logprobs(model.session(len(ids)).forward(ids[:-1], all_logits=True))
    theirs = _log_softmax(ref.logits(ids[:-1]))
    agreement = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
    kl = float(np.mean((np.exp(theirs) * (theirs - ours)).sum(-1)))

    # Perplexity as llama-perplexity computes it (BOS-free chunks of PPL_CTX tokens).
    text = perplexity_text()
    stream = tok.encode(text)
    nll_int, nll_f64 = [], []
    for c in range(PPL_CHUNKS):
        chunk = stream[c * PPL_CTX:(c + 1) * PPL_CTX]
        nll_int += _chunk_nll(_int_logprobs(model.session(PPL_CTX).forward(chunk, all_logits=True)), chunk)
        nll_f64 += _chunk_nll(_log_softmax(ref.logits(chunk)), chunk)
    ppl_int, ppl_f64 = float(np.exp(np.mean(nll_int))), float(np.exp(np.mean(nll_f64)))
    llama = llama_perplexity(str(find_gguf_path()), text)
    chat = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = tok.decode(model.session().generate(chat, 20, stop_ids=[tok.eos_id]).ids)
    out = {"positions": len(ids) - 1, "top1_agreement": round(agreement, 4), "target_top1": 0.96,
           "mean_kl": round(kl, 5), "target_kl": 0.005,
           "ppl_integer": round(ppl_int, 3), "ppl_float64": round(ppl_f64, 3), "ppl_chunks": PPL_CHUNKS,
           "ppl_ctx": PPL_CTX, **llama, "paris_answer": answer, "names_paris": "Paris" in answer}
    ppl_ok = True
    if "llama_ppl" in llama:
        out["ppl_ratio_integer_over_llama"] = round(ppl_int / llama["llama_ppl"], 4)
        ppl_ok = abs(ppl_int / llama["llama_ppl"] - 1) <= 0.01
    out["meets_target"] = bool(agreement >= 0.96 and kl <= 0.005 and ppl_ok and "Paris" in answer)
    return out


LONG_TEXT = Path("/usr/share/common-licenses/GPL-3")


def smollm2_long(positions: int = 4096) -> dict:
    """Top-1 agreement and mean KL over one context of `positions` tokens (the
    long-context limit, docs/ops.md "Long context") of held-out text (Debian's
    copy of the GPL-3, 6,935 tokens), same targets as `smollm2`:

        python -c "from bench.fidelity import smollm2_long; print(smollm2_long())"
    """
    from opinfer.models.smollm2.tokenizer import load_tokenizer
    from opinfer.models.smollm2.engine import default_model

    ids = load_tokenizer().encode(" ".join(LONG_TEXT.read_text().split()))[: positions + 1]
    model, ref = default_model(), Float64SmolLM2()
    hidden = ref.hidden(ids[:-1])
    session = model.session(len(ids))
    agree, kls = [], []
    for start in range(0, len(ids) - 1, 512):    # logits 512 positions at a time: bounded memory
        piece = ids[start:min(start + 512, len(ids) - 1)]
        ours = _int_logprobs(session.forward(piece, all_logits=True))
        theirs = _log_softmax(hidden[start:start + len(piece)] @ ref.embed.T)
        agree += list(ours.argmax(-1) == theirs.argmax(-1))
        kls += list((np.exp(theirs) * (theirs - ours)).sum(-1))
    agreement, kl = float(np.mean(agree)), float(np.mean(kls))
    tail = float(np.mean(agree[-1024:]))          # the last 1,024 positions alone
    return {"positions": len(ids) - 1, "top1_agreement": round(agreement, 4), "mean_kl": round(kl, 5),
            "top1_last_1024": round(tail, 4), "meets_target": bool(agreement >= 0.96 and kl <= 0.005)}


def report(result: dict) -> None:
    m = result["minilm"]
    print(f"all-MiniLM-L6-v2, integer vs float32 reference, {m['sentences']} held-out sentences:")
    print(f"  mean cosine {m['mean_cosine']}  (min {m['min_cosine']}, target >= {m['target_mean']}: "
          f"{verdict(m['meets_target'])})")
    s = result["smollm2"]
    if "error" in s:
        print(f"SmolLM2: {s['error']}")
        return
    print(f"SmolLM2-135M-Instruct, integer vs float64 on the GGUF's dequantised weights, {s['positions']} "
          f"held-out positions:")
    print(f"  top-1 agreement {s['top1_agreement']} (target >= {s['target_top1']}: "
          f"{verdict(s['top1_agreement'] >= s['target_top1'])}), mean KL {s['mean_kl']} "
          f"(target <= {s['target_kl']}: {verdict(s['mean_kl'] <= s['target_kl'])})")
    print(f"  perplexity on pydoc_data.topics (ctx {s['ppl_ctx']}, {s['ppl_chunks']} chunks): integer "
          f"{s['ppl_integer']}, float64 {s['ppl_float64']}", end="")
    if "llama_ppl" in s:
        ok = abs(s["ppl_ratio_integer_over_llama"] - 1) <= 0.01
        print(f", llama-perplexity {s['llama_ppl']}: ratio {s['ppl_ratio_integer_over_llama']} "
              f"(target within 1 %: {verdict(ok)})")
    else:
        print(f"\n  llama.cpp: {s['llama_cpp']}")
    print(f"  greedy answer to 'What is the capital of France?': {s['paris_answer']!r} "
          f"(names Paris: {verdict(s['names_paris'])})")


def main(argv=None) -> int:
    return run(argv, __doc__, lambda: {"minilm": minilm(), "smollm2": smollm2()}, report)


if __name__ == "__main__":
    sys.exit(main())
