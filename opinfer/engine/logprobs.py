"""Log-probabilities reported with generated and prompt tokens (OpenAI `logprobs`,
`top_logprobs`, and `echo` + `logprobs` on /v1/completions).

What the numbers mean (docs/serving.md, "Log-probabilities"): the natural log of
the probability with which the committed sampler draws the token at temperature 1
and top_p 1 from the integer logits row, i.e.

    logprob(i) = ln(w_i / W),   w_i = sample_weight(logit_i, top, 1000),  W = sum_j w_j

with the sampler's own integer weights (opinfer.engine.sampling.padded_weights:
2^16 exp(-(top - logit_i) / 2^16) on the integer exp's grid). Temperature 1 and no
top_p, whatever the job's own sampling parameters, as vLLM (raw logprobs, before
temperature and top-p) and OpenAI do: at temperature 0 the job's own distribution
is a point mass and would say nothing, and a text's score must not depend on how
the answer was sampled. A token whose integer weight rounds to 0 (about 11.8 nats
or more below the top logit: the sampler never draws it at temperature <= 1) gets
the log of its unrounded weight, -(top - logit_i) / 2^16 + ln(2^16 / W), so that
scores stay finite and ordered. The numbers are a pure function of the committed
integer logits (floats only in the final log), but they are a courtesy: they are
not part of the signed output and no dispute is about them.
"""

from __future__ import annotations

import math

import numpy as np

from opinfer.semantics import elements as el
from opinfer.semantics.quant import exp_neg, round_div

LOGIT_ONE = 1 << 16                  # logits at 2^-16
CUT = 23 * LOGIT_ONE                 # beyond 23 nats below the top exp_neg is exactly 0 (q >= 32)
MAX_TOP = 20


def _weights(logits: np.ndarray, top: int) -> np.ndarray:
    """sample_weight(logit, top, 1000) of every element (padded_weights at temperature 1)."""
    u = np.minimum(round_div((top - logits) * 1000, 1000 << 8), el.EXP_INPUT_MAX)
    return exp_neg(u)


def _row_total(logits: np.ndarray) -> tuple[int, int]:
    """(top, W) of one row; only logits within CUT of the top have a non-zero weight."""
    top = int(logits.max())
    near = logits[logits >= top - CUT]
    return top, int(_weights(near, top).sum())


def _logprob(logit: int, top: int, total: int) -> float:
    w = int(_weights(np.array([logit], dtype=np.int64), top)[0])
    if w > 0:
        return math.log(w) - math.log(total)
    return -(top - logit) / LOGIT_ONE + math.log(LOGIT_ONE) - math.log(total)


def token_logprobs(logits, token: int, k: int = 0) -> tuple[float, list[list]]:
    """(logprob of `token`, the k most likely [id, logprob] pairs, by logit then lowest id)."""
    row = np.asarray(logits, dtype=np.int64).ravel()
    if not 0 <= k <= MAX_TOP:
        raise ValueError(f"logprobs must lie in [0, {MAX_TOP}], got {k}")
    top, total = _row_total(row)
    top_k: list[list] = []
    if k:
        cand = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
        # ties at the k-th value: every id with that logit competes, the lowest ids win
        kth = int(row[cand].min())
        ids = np.flatnonzero(row >= kth)
        ids = ids[np.lexsort((ids, -row[ids]))][:k]
        top_k = [[int(i), _logprob(int(row[i]), top, total)] for i in ids]
    return _logprob(int(row[token]), top, total), top_k


def prompt_logprobs(rows, prompt: list[int], start: int) -> list[float]:
    """Log-probabilities of prompt tokens start+1 .. start+len(rows) given their prefixes,
    from the logits rows of positions start .. start+len(rows)-1 (the last row of a whole
    prompt predicts the first generated token, not a prompt token: it is skipped)."""
    out = []
    for r, row in enumerate(np.asarray(rows, dtype=np.int64)):
        pos = start + r + 1
        if pos >= len(prompt):
            break
        top, total = _row_total(row)
        out.append(_logprob(int(row[prompt[pos]]), top, total))
    return out
