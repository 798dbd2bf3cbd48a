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

Before all of this, `penalise` applies the job's presence and frequency
penalties and logit bias to the logits (OpenAI's rule in integers,
elements.penalty: logit - (presence [n > 0] + frequency n) + bias, n = how
often the token was generated before this step); `choose` is the one place
that turns a logits row and the tokens generated so far into the next token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from opinfer.semantics import elements as el
from opinfer.semantics.quant import exp_neg, round_div
from opinfer.semantics.quant import penalise as penalise_row

TEMPERATURE_MILLI_MAX = el.TEMPERATURE_MILLI_MAX
SEED_LIMIT = 1 << 64
INT16 = (-(1 << 15), (1 << 15) - 1)
PENALTY_MAX = 2 * (1 << el.PENALTY_BITS)     # OpenAI's |presence|, |frequency| <= 2.0
BIAS_MAX = 100 * (1 << el.BIAS_BITS)         # OpenAI's |logit_bias| <= 100
MAX_BIAS_ENTRIES = 300                        # OpenAI's cap on logit_bias entries
PAD_OFFSET = 1 << 40       # padded logits are top - 2^40: their weight is 0
CHUNK = el.CHUNK_WIDTH
ZERO_WEIGHT_U = 5700       # exp_neg(u) == 0 for every u > 3016 (and by construction for u >= 5679)


@dataclass(frozen=True)
class SamplingParams:
    """temperature_milli: temperature * 1000 in [0, 2000], 0 = greedy;
    top_p_q: round(top_p * 2^16) in [1, 2^16] (2^16 keeps every token);
    seed: in [0, 2^64), the draw for step s is keccak256(seed, s) (no hidden randomness);
    presence_q, frequency_q: the penalties at 2^-12 (int16; the API keeps them in
    [-8192, 8192], OpenAI's [-2, 2]); logit_bias: (token id, bias at 2^-8) pairs
    (int16 biases; the API keeps them in [-25600, 25600], OpenAI's [-100, 100]).
    Any int16 value has a defined result (the job input carries int16 words)."""

    temperature_milli: int
    top_p_q: int = el.TOP_P_ONE
    seed: int = 0
    presence_q: int = 0
    frequency_q: int = 0
    logit_bias: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        for name, value, lo, hi in (("temperature_milli", self.temperature_milli, 0, TEMPERATURE_MILLI_MAX),
                                    ("top_p_q", self.top_p_q, 1, el.TOP_P_ONE),
                                    ("seed", self.seed, 0, SEED_LIMIT - 1),
                                    ("presence_q", self.presence_q, *INT16),
                                    ("frequency_q", self.frequency_q, *INT16)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}")
            object.__setattr__(self, name, int(value))
        bias = tuple((int(t), int(b)) for t, b in self.logit_bias)
        if any(not (0 <= t <= 0xFFFF and INT16[0] <= b <= INT16[1]) for t, b in bias):
            raise ValueError("logit_bias entries must be (uint16 token id, int16 bias)")
        object.__setattr__(self, "logit_bias", bias)

    @property
    def greedy(self) -> bool:
        return self.temperature_milli == 0

    @property
    def penalised(self) -> bool:
        """Whether penalise changes anything."""
        return bool(self.presence_q or self.frequency_q or self.logit_bias)

    @classmethod
    def of_job(cls, job) -> "SamplingParams":
        """The sampler of a job input (opinfer.semantics.jobinput.JobInput, read by attribute)."""
        return cls(job.temperature_milli, job.top_p_q, job.seed, getattr(job, "presence_q", 0),
                   getattr(job, "frequency_q", 0), tuple(getattr(job, "logit_bias", ())))


def from_openai(temperature: float | None = None, top_p: float | None = None,
                seed: int | None = None, presence_penalty: float | None = None,
                frequency_penalty: float | None = None, logit_bias: dict | None = None,
                vocab: int = 0xFFFF) -> SamplingParams:
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
    - presence_penalty, frequency_penalty: in [-2, 2], default 0;
      presence_q = round(penalty * 2^12) (half up).
    - logit_bias: {token id (an int or its decimal string): bias in [-100, 100]},
      at most 300 entries, ids below `vocab`; each bias_q = round(bias * 2^8)
      (half up); entries sorted by id (one encoding per request).
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
    pres = 0.0 if presence_penalty is None else _number("presence_penalty", presence_penalty, -2.0, 2.0)
    freq = 0.0 if frequency_penalty is None else _number("frequency_penalty", frequency_penalty, -2.0, 2.0)
    return SamplingParams(temperature_milli=math.floor(t * 1000 + 0.5),
                          top_p_q=max(math.floor(p * el.TOP_P_ONE + 0.5), 1), seed=s,
                          presence_q=math.floor(pres * (1 << el.PENALTY_BITS) + 0.5),
                          frequency_q=math.floor(freq * (1 << el.PENALTY_BITS) + 0.5),
                          logit_bias=_logit_bias(logit_bias, vocab))


def _logit_bias(bias, vocab: int) -> tuple[tuple[int, int], ...]:
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise ValueError(f"logit_bias must be a map from token ids to numbers, got {type(bias).__name__}")
    if len(bias) > MAX_BIAS_ENTRIES:
        raise ValueError(f"logit_bias takes at most {MAX_BIAS_ENTRIES} entries, got {len(bias)}")
    out: dict[int, int] = {}
    for key, value in bias.items():
        if isinstance(key, bool) or not isinstance(key, (int, str, np.integer)):
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        try:
            token = int(key)
        except ValueError:
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
        if isinstance(key, str) and key.strip() != str(token):
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        if not 0 <= token < min(vocab, 0xFFFF):
            raise ValueError(f"logit_bias token id {token} outside the vocabulary of {min(vocab, 0xFFFF)}")
        if token in out:
            raise ValueError(f"logit_bias names token {token} twice")
        out[token] = math.floor(_number("logit_bias", value, -100.0, 100.0) * (1 << el.BIAS_BITS) + 0.5)
    return tuple(sorted(out.items()))


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


def penalise(logits: np.ndarray, params: SamplingParams | None, generated) -> np.ndarray:
    """elements.penalty on every logit of a row (semantics.quant.penalise, the
    rule the program's PENALTY op runs too): `generated` are the ids the job
    generated before this step. Identity when the params penalise nothing."""
    z = np.asarray(logits, dtype=np.int64).ravel()
    if params is None or not params.penalised:
        return z
    return penalise_row(z, params.presence_q, params.frequency_q, params.logit_bias, generated)


def choose(logits: np.ndarray, params: SamplingParams | None, generated) -> int:
    """The next token of a job from its logits row and the ids it generated so
    far: penalise, then the argmax (params None or greedy) or next_token with
    step = len(generated). The engine's generation loop calls this, once."""
    generated = list(generated)
    z = penalise(logits, params, generated)
    if params is None or params.greedy:
        return int(np.argmax(z))
    return next_token(z, params, len(generated))


def choose_many(rows, params: list, generated: list) -> tuple[list[int], list[np.ndarray]]:
    """choose for several jobs at once (a decode step's rows): (tokens, the rows they were drawn
    from, i.e. the penalised rows). The same tokens as choose row by row: greedy rows take the
    argmax, sampled rows their weights, thresholds and picks in one native call each
    (next_tokens)."""
    drawn = [penalise(row, p, g) for row, p, g in zip(rows, params, generated)]
    tokens: list[int] = [0] * len(drawn)
    sampled = []
    for i, (z, p) in enumerate(zip(drawn, params)):
        if p is None or p.greedy:
            tokens[i] = int(np.argmax(z))
        else:
            sampled.append(i)
    if sampled:
        picks = next_tokens([drawn[i] for i in sampled], [params[i] for i in sampled],
                            [len(generated[i]) for i in sampled])
        for i, t in zip(sampled, picks):
            tokens[i] = t
    return tokens, drawn


def next_tokens(rows, params: list[SamplingParams], steps: list[int]) -> list[int]:
    """next_token of several rows (one vocabulary) at once: the same tokens, from the native
    kernels (oi_sample_rows: every row's weights, tau and kept; elements.draw here; then
    oi_sample_pick_rows), which apply these rules to the whole row in C: ~100x the numpy
    path on a flat row, where most of a 49,152-token vocabulary is near the top. Falls back
    to next_token row by row without the native library."""
    rows = [np.asarray(r, dtype=np.int64).ravel() for r in rows]
    if not rows:
        return []
    if any(p.greedy for p in params) or len({r.size for r in rows}) != 1 or \
            not 0 < rows[0].size < 1 << el.INDEX_BITS:
        return [next_token(r, p, s) for r, p, s in zip(rows, params, steps)]
    try:
        from opinfer import native

        lib = native.lib()
    except Exception:  # noqa: BLE001 - no compiler or library: the numpy rules
        return [next_token(r, p, s) for r, p, s in zip(rows, params, steps)]
    b, v = len(rows), rows[0].size
    logits = np.ascontiguousarray(np.stack(rows))
    temp = np.array([p.temperature_milli for p in params], dtype=np.int64)
    top_p = np.array([p.top_p_q for p in params], dtype=np.int64)
    w = np.empty((b, v), dtype=np.int32)
    tau, kept = np.empty(b, dtype=np.int64), np.empty(b, dtype=np.int64)
    if lib.oi_sample_rows(b, logits.ctypes.data, v, temp.ctypes.data, top_p.ctypes.data, w.ctypes.data,
                          tau.ctypes.data, kept.ctypes.data) != 0:
        raise ValueError("oi_sample_rows refused its parameters")
    r = np.array([el.draw(p.seed, s, int(k)) for p, s, k in zip(params, steps, kept)], dtype=np.int64)
    out = np.empty(b, dtype=np.int64)
    if lib.oi_sample_pick_rows(b, w.ctypes.data, v, tau.ctypes.data, r.ctypes.data, out.ctypes.data) != 0:
        raise ValueError("oi_sample_pick_rows: a draw beyond the kept weights")
    return [int(t) for t in out]


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
