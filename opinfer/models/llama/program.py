"""A llama-family decoder's decode step as an op program (docs/ops.md, "Decoder ops").

The template (SmolLM2-135M-Instruct: 527 ops; every Linear a DENSE_BLOCK over
the GGUF's own blocks; a file with Q/K/V biases adds a RESIDUAL per block that
adds them, the bias a weight row) processes one position per step, so a job of L
prompt tokens and M new tokens is L + M - 1 steps; the K and V^T caches are
tensors that each step extends (APPEND reads the previous step's). The
program and the fast engine (`smollm2.Session.generate`) compute the same
tokens bit for bit (tests/unit/test_smollm2_program.py, tests/unit/test_llama_gguf.py);
the program exists so that a trace, state roots and one-step witnesses can be
built for any job, and so that the model has an on-chain identity (`model_root`).
`build_from_gguf(path)` is the whole path from a file to its program.
"""

from __future__ import annotations

from dataclasses import replace
import numpy as np

from opinfer.errors import CommitmentError
from opinfer.models.llama import engine as sm
from opinfer.semantics import blocks as blk
from opinfer.semantics import elements as el
from opinfer.semantics.builder import ProgramBuilder
from opinfer.semantics.ops import (APPEND, BISECT, CHUNK_ARGMAX, CONTEXT, DENSE_BLOCK, EMBED_TOKEN, EXP_SUMS, GEN,
                                   INPUT, MASKED_SUMS, MATCH, NEXT, PENALTY, PICK, PICK_TOKEN, PROBS, RESIDUAL, RMS_NORM, ROPE,
                                   SAMPLE_WEIGHTS, SCORES, SWIGLU, TABLE_WIDTH, Slot, dim, ref)
from opinfer.semantics.program import PER_POSITION, JobLimits, Program
from opinfer.semantics.quant import INT32

# Positions a job may use (prompt + max_tokens - 1 <= positions): the RoPE
# table has this many rows, so a longer job has no honest trace. The rows that
# grow with the context (scores, probabilities, the V^T cache) are proven whole,
# and StepVerifier proves rows of up to 4,096 values; the attention softmax is
# split into chunks of 256 (EXP_SUMS, PROBS) so that no one-step takes more
# than 256 exps (docs/ops.md, "Long context"). A model's positions are
# min(its context_length, MAX_CONTEXT).
MAX_CONTEXT = 4096
# The GEN row holds M + 1 values and is proven whole: M + 1 <= 4,096.
MAX_NEW = MAX_CONTEXT - 1
ONE = dim(1)
CACHE = dim(1, per_step=1)      # s + 1 positions
PREV_CACHE = dim(per_step=1)    # the previous step's s positions
T0 = Slot(ref(INPUT), ONE, dim(0, 1, 0, 1))


def _dense(b: ProgramBuilder, x: Slot, dense: sm.Dense, weights: list[Slot] | None = None, fold: int = 0) -> Slot:
    """A DENSE_BLOCK op: slots x, codes, D (and M for Q4_1); params fmt, F, mult, split,
    (shift, lo, hi) of the columns below split, (shift, lo, hi) of the rest."""
    w = dense.w if weights is None else None
    if weights is None:
        weights = [b.weight(w.codes.astype(np.int64)), b.weight(w.D)] + ([b.weight(w.M)] if w.fmt == blk.Q4_1 else [])
    n = dense.n
    rows, cols = (dim(n // fold), dim(fold)) if fold else (ONE, dim(n))
    params = [dense.fmt, fold, dense.mult, dense.split, dense.shift0, dense.lo0, dense.hi0, dense.shift1, dense.lo1,
              dense.hi1]
    return b.op(DENSE_BLOCK, rows, cols, [x, *weights], params)


def _norm(b: ProgramBuilder, x: Slot, gain: np.ndarray, eps: int, width: int) -> Slot:
    return b.op(RMS_NORM, ONE, dim(width), [x, b.weight(gain)], [eps, *INT32])


def positions_of(model: sm.IntLlama) -> int:
    """The positions a job of this model may use: its RoPE rows, at most MAX_CONTEXT."""
    return min(model.max_ctx, MAX_CONTEXT)


def build_program(model: sm.IntLlama, name: str, positions: int | None = None,
                  max_new: int | None = None) -> Program:
    """The decode step of `model` as a program named `name`. `positions` (default
    positions_of(model)) sets the RoPE rows committed, EXP_SUMS' chunks and the
    job limits; max_new defaults to positions - 1."""
    positions = positions_of(model) if positions is None else positions
    if not 1 <= positions <= MAX_CONTEXT:
        raise ValueError(f"positions {positions}: between 1 and {MAX_CONTEXT}")
    max_new = positions - 1 if max_new is None else max_new
    context_chunks = -(-positions // TABLE_WIDTH)        # EXP_SUMS' columns: chunks of 256 positions
    b = ProgramBuilder()
    nh, nkv, D = model.n_heads, model.n_kv_heads, model.head_dim
    width = model.hidden
    kv = nkv * D
    vocab = model.vocab
    if vocab % TABLE_WIDTH:
        raise ValueError("the vocabulary must be a multiple of 256 (logits are folded into chunks of 256)")
    chunks = vocab // TABLE_WIDTH

    # The Q8_0 token embeddings: gathered by EMBED_TOKEN (and the LM head's blocks when tied).
    emb = model.embed
    embed = [b.weight(emb.codes.astype(np.int64)), b.weight(emb.D)]
    del emb
    score = [model.score_mult, model.score_shift]
    # EMBED_TOKEN reads the previous step's NEXT, whose index is known once
    # the template is complete: built with a placeholder, patched below.
    x = b.op(EMBED_TOKEN, ONE, dim(width), [T0, b.prev(0, ONE, ONE), *embed], [sm.EMBED_SHIFT, *INT32])
    rope_table = b.weight(np.concatenate([model.cos[:positions], model.sin[:positions]], axis=1))
    ones = b.weight(np.ones(width, dtype=np.int64))
    silu = b.weight(np.asarray(model.silu, dtype=np.int64).reshape(-1, TABLE_WIDTH))
    for layer in model.layers:
        h = _norm(b, x, layer.attn_gain, model.eps, width)
        qkv = _dense(b, h, layer.qkv)
        if layer.qkv_bias is not None:
            # q|k|v + bias: the product's clamp left room for it (engine.IntLlama.build)
            qkv = b.op(RESIDUAL, ONE, dim(layer.qkv.n), [qkv, b.weight(layer.qkv_bias[None, :]),
                                                         b.weight(np.ones(layer.qkv.n, dtype=np.int64))], [0, *INT32])
        qk = b.op(ROPE, ONE, dim((nh + nkv) * D), [qkv, rope_table], [D])
        k_at = len(b.ops)
        k_cache = b.op(APPEND, CACHE, dim(kv), [b.prev(k_at, PREV_CACHE, dim(kv)), qk], [0, nh * D])
        v_at = len(b.ops)
        vt_cache = b.op(APPEND, dim(kv), CACHE, [b.prev(v_at, dim(kv), PREV_CACHE), qkv], [1, (nh + nkv) * D])
        scores = b.op(SCORES, dim(nh), CACHE, [qk, k_cache], [D, nh // nkv])
        sums = b.op(EXP_SUMS, dim(nh), dim(context_chunks), [scores], score)
        probs = b.op(PROBS, dim(nh), CACHE, [scores, sums], [*score, sm.PROB_ONE])
        ctx = b.op(CONTEXT, ONE, dim(nh * D), [probs, vt_cache], [D, nh // nkv, sm.CTX_MULT, sm.CTX_SHIFT, *INT32])
        o = _dense(b, ctx, layer.o)
        x = b.op(RESIDUAL, ONE, dim(width), [x, o, ones], [0, *INT32])
        h = _norm(b, x, layer.ffn_gain, model.eps, width)
        gate_up = _dense(b, h, layer.gate_up)
        hidden = layer.gate_up.split
        m = b.op(SWIGLU, ONE, dim(hidden), [gate_up, silu], [sm.SILU_HALF])
        down = _dense(b, m, layer.down)
        x = b.op(RESIDUAL, ONE, dim(width), [x, down, ones], [0, *INT32])

    h = _norm(b, x, model.out_gain, model.eps, width)
    logits = _dense(b, h, model.head, weights=embed if model.tied else None, fold=TABLE_WIDTH)
    # Presence/frequency penalties and logit bias (identity for a version-1 job):
    # reads the previous step's GEN (the ids generated so far), patched in below.
    penalty_at = len(b.ops)
    logits = b.op(PENALTY, dim(chunks), dim(TABLE_WIDTH), [logits, T0, b.prev(0, ONE, ONE)])
    row = dim(chunks)
    packs = b.op(CHUNK_ARGMAX, ONE, row, [logits])
    weights = b.op(SAMPLE_WEIGHTS, dim(chunks), dim(TABLE_WIDTH), [logits, packs, T0])
    totals = b.op(MASKED_SUMS, ONE, row, [weights, b.weight([[0, 0]])], [1])
    bounds = b.weight([[1, el.WEIGHT_MAX]])
    for _ in range(el.BISECT_STEPS):
        sums = b.op(MASKED_SUMS, ONE, row, [weights, bounds], [0])
        bounds = b.op(BISECT, ONE, dim(2), [sums, bounds, totals, T0])
    kept = b.op(MASKED_SUMS, ONE, row, [weights, bounds], [1])
    pick = b.op(PICK, ONE, dim(2), [kept, T0])
    picked = b.op(PICK_TOKEN, ONE, ONE, [pick, weights, bounds, T0])
    next_at = len(b.ops)
    nxt = b.op(NEXT, ONE, ONE, [T0, packs, picked])
    gen_cols = dim(1, per_gen=1)
    gen_at = len(b.ops) + 1
    match = b.op(MATCH, ONE, ONE, [T0, b.prev(gen_at, ONE, gen_cols), nxt])
    b.op(GEN, ONE, gen_cols, [b.prev(gen_at, ONE, gen_cols), nxt, match])

    first = b.ops[0]
    b.ops[0] = replace(first, slots=(first.slots[0], b.prev(next_at, ONE, ONE), *first.slots[2:]))
    pen = b.ops[penalty_at]
    b.ops[penalty_at] = replace(pen, slots=(*pen.slots[:2], b.prev(gen_at, ONE, gen_cols)))
    return Program(b.ops, b.weights, b.widths, PER_POSITION, name, limits(vocab, positions, max_new))


def limits(vocab: int, positions: int = MAX_CONTEXT, max_new: int = MAX_NEW) -> JobLimits:
    """What check_job enforces, committed in the model root so that
    StepVerifier.job_shape refuses the same jobs (a node that signs one loses
    at once): positions L + M - 1 <= positions, prompt tokens below the
    vocabulary, temperature_milli <= 2000, 1 <= max_tokens <= max_new."""
    return JobLimits(positions=positions, vocab=vocab, max_temperature=el.TEMPERATURE_MILLI_MAX, min_new=1,
                     max_new=max_new)


def check_job(job, vocab: int, positions: int = MAX_CONTEXT, max_new: int = MAX_NEW) -> None:
    """Refuse a job that has no honest trace (what a coordinator or node checks
    before serving it): token ids beyond the vocabulary, no token to
    generate (or more than max_new), a temperature above 2.0, or more positions than `positions`."""
    if not 1 <= job.max_tokens <= max_new:
        raise CommitmentError(f"max_tokens must be between 1 and {max_new}")
    if job.temperature_milli > el.TEMPERATURE_MILLI_MAX:
        raise CommitmentError(f"temperature_milli must be at most {el.TEMPERATURE_MILLI_MAX} (temperature 2.0)")
    if max(job.tokens) >= vocab:
        raise CommitmentError(f"token id {max(job.tokens)} outside the vocabulary of {vocab}")
    if len(job.tokens) + job.max_tokens - 1 > positions:
        raise CommitmentError(f"prompt ({len(job.tokens)} tokens) + max_tokens ({job.max_tokens}) exceeds the "
                              f"context of {positions} + 1 tokens")


def build_from_gguf(path, name: str | None = None, positions: int | None = None) -> Program:
    """The integer program of a llama-family GGUF file (architecture and sizes from its
    metadata; gguf.ModelFileError names what the file has that this library does not run).
    `name` defaults to the file's general.name, else its file name without .gguf."""
    from pathlib import Path

    from opinfer.models.llama.gguf import read_config

    cfg = read_config(path)
    name = name or cfg.name or Path(path).name.removesuffix(".gguf")
    positions = positions or min(cfg.context_length, MAX_CONTEXT)
    return build_program(sm.IntLlama.build(path, positions), name, positions)


def engine_tokens(model):
    """fn(program, job) -> the ids the engine generates for the job, ignoring its stop
    sequences (the program's steps go on after a stop): what a trace of the job embeds
    after its prompt. Only a hint for opinfer.trace.blocked, which checks every one."""
    def tokens(program: Program, job) -> list[int]:
        from opinfer.engine.sampling import SamplingParams

        if job.max_tokens <= 1:
            return []
        session = model.session(len(job.tokens) + job.max_tokens)
        return session.generate(list(job.tokens), job.max_tokens - 1, sampler=SamplingParams.of_job(job)).ids
    return tokens


def register_tokens(name: str, model) -> None:
    """Let traces of the program called `name` take their generated tokens from `model`'s engine."""
    from opinfer.trace.hints import register

    register(name, engine_tokens(model))
