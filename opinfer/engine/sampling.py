"""Seeded integer sampling (temperature, top-p) that the chain can re-check.

The next token is a pure function of the int logits row, the sampling
parameters and the step index, built only from the element rules in
opinfer/semantics/elements.py, so a dispute can check it 256 logits at a time
(docs/ops.md, "Element rules"):

1. greedy (temperature_milli == 0): the argmax, ties to the lowest id
   (chunk_argmax over chunks of 256, combined by max, then argmax_token);
2. otherwise: top = max logit; every logit gets the weight
   w = sample_weight(logit, top, temperature_milli) in [0, 2^16] (top has
   2^16); the row is padded to a multiple of 256 with logits top - 2^40,
   whose weight is exactly 0 (PAD_OFFSET: u saturates at EXP_INPUT_MAX);
3. total = sum of all weights; tau = the largest integer in [1, 2^16] with
   (sum_{w >= tau} w) << 16 >= top_p_q * total (top_p_threshold; on chain a
   17-step bisection of bisect_step over the 256-chunks' masked sums);
4. kept = sum_{w >= tau} w; r = draw(seed, step, kept) =
   keccak256(abi_encode(uint256 seed, uint256 step)) mod kept;
5. the token is the first index whose running sum of kept weights exceeds r
   (on chain: pick_chunk over the chunks' masked sums, then pick_in_chunk).

Weights below tau (padding included, since tau >= 1) are never drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from opinfer.semantics import elements as el
from opinfer.semantics.quant import exp_neg, round_div

TEMPERATURE_MILLI_MAX = el.TEMPERATURE_MILLI_MAX
SEED_LIMIT = 1 << 64
PAD_OFFSET = 1 << 40       # padded logits are top - 2^40: their weight is 0
CHUNK = el.CHUNK_WIDTH
ZERO_WEIGHT_U = 5700       # exp_neg(u) == 0 for every u > 3016 (and by construction for u >= 5679)


@dataclass(frozen=True)
class SamplingParams:
    """temperature_milli: temperature * 1000 in [0, 2000], 0 = greedy;
    top_p_q: round(top_p * 2^16) in [1, 2^16] (2^16 keeps every token);
    seed: in [0, 2^64), the draw for step s is keccak256(seed, s) (no hidden randomness)."""

    temperature_milli: int
    top_p_q: int = el.TOP_P_ONE
    seed: int = 0

    def __post_init__(self):
        for name, value, lo, hi in (("temperature_milli", self.temperature_milli, 0, TEMPERATURE_MILLI_MAX),
                                    ("top_p_q", self.top_p_q, 1, el.TOP_P_ONE),
                                    ("seed", self.seed, 0, SEED_LIMIT - 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}")
            object.__setattr__(self, name, int(value))

    @property
    def greedy(self) -> bool:
        return self.temperature_milli == 0


def from_openai(temperature: float | None = None, top_p: float | None = None,
                seed: int | None = None) -> SamplingParams:
    """SamplingParams from OpenAI-style request fields.

    - temperature: in [0, 2], default 1 (OpenAI's default); 0 is greedy;
      temperature_milli = round(temperature * 1000) (half up).
    - top_p: in [0, 1], default 1 (keep every token); top_p_q =
      max(round(top_p * 2^16), 1), so top_p 0 keeps only the top weight (and its ties).
    - seed: an integer in [0, 2^64); None gives 0, which is NOT random: the
      draws are a fixed function of (seed, step). A coordinator serving
      requests without a seed must pick one itself (e.g. from its own
      randomness) and record it with the job, or every unseeded request with
      the same prompt samples the same text.
    Raises ValueError naming the parameter when a value is out of range."""
    t = 1.0 if temperature is None else _number("temperature", temperature, 0.0, 2.0)
    p = 1.0 if top_p is None else _number("top_p", top_p, 0.0, 1.0)
    if seed is None:
        s = 0
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    elif not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must lie in [0, 2^64), got {seed}")
    else:
        s = int(seed)
    return SamplingParams(temperature_milli=math.floor(t * 1000 + 0.5),
                          top_p_q=max(math.floor(p * el.TOP_P_ONE + 0.5), 1), seed=s)


def _number(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got {value!r}")
    return v


def padded_weights(logits: np.ndarray, temperature_milli: int) -> np.ndarray:
    """sample_weight of every logit, the row padded with zero weights to a
    multiple of 256 (padded logits top - PAD_OFFSET have weight 0)."""
    logits = np.asarray(logits, dtype=np.int64)
    top = logits.max()
    pad = (-logits.size) % CHUNK
    full = np.concatenate([logits, np.full(pad, top - PAD_OFFSET, dtype=np.int64)])
    u = np.minimum(round_div((top - full) * 1000, temperature_milli << 8), el.EXP_INPUT_MAX)
    return exp_neg(u)


def top_p_threshold(weights: np.ndarray, top_p_q: int) -> int:
    """Vectorised elements.top_p_threshold."""
    weights = np.asarray(weights, dtype=np.int64)
    total = int(weights.sum())
    if total == 0:
        return el.WEIGHT_MAX
    values, counts = np.unique(weights[weights > 0], return_counts=True)
    values, counts = values[::-1], counts[::-1]
    kept = np.cumsum(values * counts)
    first = int(np.argmax((kept << 16) >= top_p_q * total))
    return min(int(values[first]), el.WEIGHT_MAX)


def next_token(logits: np.ndarray, params: SamplingParams, step: int) -> int:
    """The token drawn from an int64 logits row (logits at 2^-16) at decoding step `step`."""
    logits = np.asarray(logits, dtype=np.int64).ravel()
    if not 0 < logits.size < 1 << el.INDEX_BITS:
        raise ValueError(f"vocabulary size {logits.size} outside [1, 2^17)")
    if params.greedy:
        return int(np.argmax(logits))
    # Only logits near the top have a non-zero weight: u >= ZERO_WEIGHT_U gives exactly 0, and a
    # zero weight is never drawn and adds nothing to any sum, so the rule over the near ids (in id
    # order) draws the same token as over the whole row, ~50x faster (the decode loop runs it per
    # sequence per step).
    near = np.flatnonzero((logits.max() - logits) * 1000 < ZERO_WEIGHT_U * (params.temperature_milli << 8))
    w = padded_weights(logits[near], params.temperature_milli)
    tau = top_p_threshold(w, params.top_p_q)
    kept_w = np.where(w >= tau, w, 0)
    cum = np.cumsum(kept_w)
    r = el.draw(params.seed, step, int(cum[-1]))
    return int(near[np.searchsorted(cum, r, side="right")])


def next_token_by_rules(logits, params: SamplingParams, step: int) -> int:
    """next_token composed from the element rules, 256 logits at a time, as a
    dispute checks it (slow: plain Python ints; the reference for tests)."""
    row = [int(v) for v in np.asarray(logits).ravel()]
    chunks = [row[j:j + CHUNK] for j in range(0, len(row), CHUNK)]
    packed = max(el.chunk_argmax(c, j * CHUNK) for j, c in enumerate(chunks))
    if params.greedy:
        return el.argmax_token(packed)
    top = el.packed_value(packed)
    pad = (-len(row)) % CHUNK
    chunks[-1] = chunks[-1] + [top - PAD_OFFSET] * pad
    weights = [[el.sample_weight(v, top, params.temperature_milli) for v in c] for c in chunks]
    total = sum(el.masked_sum(c, 0) for c in weights)
    lo, hi = 1, el.WEIGHT_MAX
    for _ in range(el.BISECT_STEPS):
        mid = (lo + hi + 1) >> 1
        lo, hi = el.bisect_step(lo, hi, [el.masked_sum(c, mid) for c in weights], total, params.top_p_q)
    tau = lo
    sums = [el.masked_sum(c, tau) for c in weights]
    r = el.draw(params.seed, step, sum(sums))
    j, rest = el.pick_chunk(sums, r)
    return j * CHUNK + el.pick_in_chunk(weights[j], tau, rest)
