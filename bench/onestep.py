"""Gas of the one-step for every op class of both real models, on a fresh anvil.

    python -m bench.onestep [--json]

For each op class (and each variant of it, e.g. the folded LM head) of
all-MiniLM-L6-v2 on its longest job (256 tokens: its tokenizer truncates there) and of SmolLM2-135M-Instruct
on a real sampled chat job, the StepVerifier recomputes elements of the
trace (first and last element, every step's worst for the decoder) and the
largest `compute_element` gas is printed. The decoder's rows that grow with
the context (attention scores, probabilities, the V^T cache) are also
measured at MAX_CONTEXT = 4,096 positions with a synthetic program holding
the chunked softmax (EXP_SUMS, PROBS) and CONTEXT over 4,096-wide rows, the
widest the protocol accepts, with scores that need 8 bytes each in the
witness and a small spread so that every exp is computed in full (the
costliest case); bench.longctx measures every op class of a real decoder
at 4,096 positions.
PENALTY is measured at its widest too (a 2,045-word input with 300
logit-bias entries and 1,023 generated ids to count, penalty_program).
DisputeGame.step adds the game's own checks to these figures (bench.gas
measures whole steps through the game). Target: the largest under 5M gas.
"""

from __future__ import annotations

import sys

import numpy as np

from bench.common import run as run_cli
from bench.common import verdict
from opinfer.chain.testnet import ProtocolNet
from opinfer.semantics import ops
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.ops import CONTEXT, DOT, EXP_SUMS, INPUT, PROBS, SAME, WEIGHT, Op, Slot, dim, ref
from opinfer.semantics.program import Program, job_steps
from opinfer.trace.state import Trace

TARGET = 5_000_000


def job_word(trace: Trace) -> int:
    job = trace.job
    return len(job.tokens) | job.tokens_at << 32 | job_steps(trace.program.steps_mode, job) << 64


def element_gas(verifier, trace: Trace, i: int, r: int, c: int) -> int:
    p = trace.program
    args = (p.model_root, p.num_ops, job_word(trace), i, trace.state_root(i), r, c, p.header(i),
            trace.witness(i, r, c))
    value = verifier.functions.compute_element(*args).call()
    assert value == int(trace.tensors[i + 1][r, c]), (p.name, i, r, c)
    return verifier.functions.compute_element(*args).estimate_gas()


def per_class(verifier, trace: Trace, steps: list[int]) -> dict:
    """Largest gas per op class variant (code, first two params: e.g. the
    folded LM head, both APPEND orientations), measured on the variant's
    first template op at each of `steps`, first and last element."""
    p = trace.program
    variants: dict = {}
    dense_names = iter(("qkv", "o", "gate_up", "down"))     # a decoder block's four DENSE_BLOCKs
    for j, op in enumerate(p.ops):
        key = (op.code, op.params[:2])
        if op.code == ops.DENSE_BLOCK and not op.params[1]:
            key = (op.code, op.params[:2], next(dense_names, None))
            if key[2] is None:
                continue
        variants.setdefault(key, j)
    out: dict = {}
    for key, j in variants.items():
        code, params = key[0], key[1]
        name = ops.NAMES[code]
        if code == ops.DENSE_BLOCK:
            name += "_lm_head" if params[1] else f"_{key[2]}"
        for step in steps:
            i = step * p.num_ops + j
            rows, cols = trace.tensors[i + 1].shape
            for r, c in {(0, 0), (rows - 1, cols - 1)}:
                out[name] = max(out.get(name, 0), element_gas(verifier, trace, i, r, c))
    return out


def long_rows_program(width: int = 4096, k: int = 32) -> Program:
    """The chunked softmax (EXP_SUMS [1, width / 256], PROBS) and CONTEXT over
    `width`-wide rows (the decoder's at MAX_CONTEXT): scores from a DOT of
    T_0's tokens ([1, k]) with a [width, k] weight, times 2^12 so that each
    needs 8 bytes in the witness (SmolLM2's q.k at 2^-18 can), with a small
    spread so that every exp is computed in full; CONTEXT = probabilities . a
    [64, width] weight row (V^T), requantised."""
    rng = np.random.default_rng(width)
    w = rng.integers(-1, 2, size=(width, k))
    w[:, :10] = 0            # the header words (top_p_q - 1 = 65535) would spread the scores ...
    w[:, 4] = 127            # ... but one, with one weight for every score: an offset of 2^23
    vt = rng.integers(-2047, 2048, size=(64, width))
    t0 = Slot(ref(INPUT), dim(1), dim(0, 1, 0, 1))
    scores = Op(DOT, dim(1), dim(width), (t0, Slot(ref(WEIGHT, 0), dim(width), dim(k), 1)),
                (1 << 12, 0, -(1 << 60), 1 << 60))     # about 2^35 each, spread about 2^20
    row = Slot(ref(SAME, 0), dim(1), dim(width))
    sums = Op(EXP_SUMS, dim(1), dim(width // 256), (row,), (1, 10))
    probs = Op(PROBS, dim(1), dim(width), (row, Slot(ref(SAME, 1), dim(1), dim(width // 256))), (1, 10, 32767))
    ctx = Op(CONTEXT, dim(1), dim(64), (Slot(ref(SAME, 2), dim(1), dim(width)), Slot(ref(WEIGHT, 1), dim(64), dim(width), 2)),
             (64, 1, 1 << 15, 30, -32768, 32767))
    return Program([scores, sums, probs, ctx], [w, vt], [1, 2], name="long-rows")


def penalty_program(job: JobInput) -> Program:
    """PENALTY at its widest: a toy decoder step (DOT logits [1, 256] from T_0,
    PENALTY, CHUNK_ARGMAX, NEXT, MATCH, GEN) for one job whose T_0 is nearly
    the 2,048 words an input may hold (300 logit-bias entries, a long prompt)
    and whose GEN row is 1,025 wide, so that the last step's PENALTY counts
    over 1,023 generated ids (all the same token: every comparison a match)."""
    from opinfer.semantics.ops import CHUNK_ARGMAX, GEN, MATCH, NEXT, PENALTY, PREV

    k = len(job.words())
    w = np.zeros((256, k), dtype=np.int64)
    w[7, job.tokens_at:] = 1                 # token 7's logit: the sum of the prompt, far above the rest
    t0 = Slot(ref(INPUT), dim(1), dim(0, 1, 0, 1))
    one, gen = dim(1), dim(1, per_gen=1)
    ops_ = [
        Op(DOT, one, dim(256), (t0, Slot(ref(WEIGHT, 0), dim(256), dim(k), 1)), (1, 0, -(1 << 31), (1 << 31) - 1)),
        Op(PENALTY, one, dim(256), (Slot(ref(SAME, 0), one, dim(256)), t0, Slot(ref(PREV, 5), one, gen))),
        Op(CHUNK_ARGMAX, one, one, (Slot(ref(SAME, 1), one, dim(256)),)),
        Op(NEXT, one, one, (t0, Slot(ref(SAME, 2), one, one), Slot(ref(SAME, 2), one, one))),
        Op(MATCH, one, one, (t0, Slot(ref(PREV, 5), one, gen), Slot(ref(SAME, 3), one, one))),
        Op(GEN, one, gen, (Slot(ref(PREV, 5), one, gen), Slot(ref(SAME, 3), one, one), Slot(ref(SAME, 4), one, one))),
    ]
    return Program(ops_, [w], [1], steps_mode=1, name="penalty-widest")


def penalty_job(max_tokens: int = 1024, entries: int = 300) -> JobInput:
    bias = tuple((3 * i, -25600 + 171 * i) for i in range(entries - 1)) + ((7, 25600),)
    prompt = 2048 - 13 - 2 * entries - 3
    return JobInput(tuple(range(100, 100 + prompt)), max_tokens=max_tokens, presence_q=-8192, frequency_q=-8192,
                    logit_bias=tuple(sorted(bias)))


def run() -> dict:
    from opinfer.models.minilm import weights as fw
    from opinfer.models.minilm.program import default_program as minilm_program
    from opinfer.models.smollm2.program import MAX_CONTEXT
    from opinfer.models.smollm2.program import default_program as smollm2_program
    from opinfer.models.smollm2.tokenizer import load_tokenizer

    with ProtocolNet.start(("owner",), coordinators=()) as net:
        w3, verifier = net.w3, net.contracts["StepVerifier"]
        out: dict = {}

        minilm = minilm_program()
        ids = fw.encode(" ".join(["word"] * 510))[:512]
        trace = Trace.of(minilm, JobInput(tuple(int(t) for t in ids)))
        out["minilm"] = {"tokens": len(ids), "gas": per_class(verifier, trace, [0])}

        smollm2 = smollm2_program()
        tok = load_tokenizer()
        im_end = tok.token_to_id("<|im_end|>")
        prompt = tok.encode_chat([{"role": "user", "content": "Name three colours."}])
        job = JobInput(tuple(prompt), max_tokens=4, temperature_milli=700, top_p_q=58982, seed=1,
                       stop_sequences=((im_end,),))
        trace = Trace.of(smollm2, job)
        steps = trace.n // smollm2.num_ops
        out["smollm2"] = {"positions": steps, "gas": per_class(verifier, trace, [0, len(prompt) - 1, steps - 1])}

        program = long_rows_program(MAX_CONTEXT)
        trace = Trace.of(program, JobInput(tuple(range(1, 23))))
        last = MAX_CONTEXT // 256 - 1
        out["long_rows"] = {"width": MAX_CONTEXT,
                            "gas": {"exp_sums": max(element_gas(verifier, trace, 1, 0, c) for c in (0, last)),
                                    "probs": max(element_gas(verifier, trace, 2, 0, c) for c in (0, MAX_CONTEXT - 1)),
                                    "context": element_gas(verifier, trace, 3, 0, 63)}}
        job = penalty_job()
        trace = Trace.of(penalty_program(job), job)
        last = trace.n - 6 + 1                       # the last step's PENALTY
        assert int(trace.tensors[-1][0, :-1].max()) == int(trace.tensors[-1][0, :-1].min()) == 7
        out["penalty_widest"] = {"input_words": len(job.words()), "generated": job.max_tokens - 1,
                                 "gas": {"penalty": element_gas(verifier, trace, last, 0, 7)}}
    largest = max(g for section in out.values() for g in section["gas"].values())
    out["largest"] = largest
    out["target"] = TARGET
    out["meets_target"] = largest < TARGET
    return out


def report(result: dict) -> None:
    print("one-step gas (StepVerifier.compute_element), largest per op class")
    for model in ("minilm", "smollm2", "long_rows", "penalty_widest"):
        section = result[model]
        size = {k: v for k, v in section.items() if k != "gas"}
        print(f"  {model} {size}")
        for name, gas in sorted(section["gas"].items(), key=lambda kv: -kv[1]):
            print(f"    {name:<18}{gas:>12,}")
    print(f"  largest {result['largest']:,} (target < {result['target']:,}: {verdict(result['meets_target'])})")


def main(argv=None) -> int:
    return run_cli(argv, __doc__, run, report)


if __name__ == "__main__":
    sys.exit(main())
