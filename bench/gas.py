"""Gas figures of the protocol, measured on a fresh anvil in one run.

    python -m bench.gas [--json]

Prints gas per leaf for batches of 1, 10 and 100 leaves (and the same with
the calldata of the job inputs taken out, which the target excludes), gas per
game move over a full game against a cheating node, the one-step for dot
products of realistic widths, the one-step of every decoder op class (the
toy decoder: SmolLM2's widths, two blocks, 512 tokens), and how much cheaper
a result is in a batch of 100 than posted alone (one transaction per result).

Batches are measured twice, side by side: under Cancun calldata pricing
(16 gas per non-zero byte, 4 per zero byte: the pricing the target assumes)
and under Prague, anvil's default, where EIP-7623 raises calldata-heavy
transactions to a floor of 40/10 gas per byte. See docs/protocol.md.
"""

from __future__ import annotations

import sys

import numpy as np

from bench.common import run as run_cli
from bench.common import verdict
from opinfer.chain.deploy import ProtocolParams
from opinfer.chain.game import GameClient
from opinfer.chain.game import play as play_game
from opinfer.chain.testnet import ProtocolNet
from opinfer.models.smollm2.testing import toy_decoder_job, toy_decoder_program
from opinfer.semantics.merkle import keccak
from opinfer.semantics.ops import DENSE, SAME, WEIGHT, Op, Slot, dim, ref
from opinfer.semantics.program import Program
from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.state import Trace
from opinfer.semantics.ops import NAMES as OP_NAMES
from opinfer.trace.testing import corrupted_trace, dot_op, toy_job, toy_program

INPUT_BYTES = 64  # a short prompt's token ids, compressed
TARGET_PER_LEAF = 5_000


def job_id(n: int) -> bytes:
    """Job ids are 128-bit random values (UUID4-like)."""
    return keccak(b"job-%d" % n)[:16]


def wide_program(k: int, cols: int = 32) -> Program:
    rng = np.random.default_rng(k)
    return Program([dot_op(0, 0, cols, k, 1 << 10, 30)], [rng.integers(-128, 128, size=(cols, k))], [1])


def dense_program(k: int, cols: int = 32, k_in: int = 40) -> Program:
    """A DENSE over an int8 activation row of width k (what op 0 makes from
    T_0), an int8 weight row and an int32 (bias, multiplier) row: the
    widest one-step reading the state rather than the job input."""
    rng = np.random.default_rng(k + 1)
    w0 = rng.integers(-128, 128, size=(k, k_in))
    w1 = rng.integers(-128, 128, size=(cols, k))
    p1 = np.stack([rng.integers(-1000, 1000, size=cols), rng.integers(1 << 12, 1 << 13, size=cols)], 1)
    dense = Op(DENSE, dim(1), dim(cols), (Slot(ref(SAME, 0), dim(1), dim(k)), Slot(ref(WEIGHT, 1), dim(cols), dim(k), 1),
                                           Slot(ref(WEIGHT, 2), dim(cols), dim(2), 4)), (30, -128, 127))
    return Program([dot_op(0, 0, k, k_in, 1 << 14, 15), dense], [w0, w1, p1], [1, 1, 4])


# One element per decoder op class, at its widest (template op of the toy
# decoder, step, element, job kind): the down projection reads a 1,536-value
# row, gate|up's output is 3,072 wide, the LM head is folded [2, 256].
DECODER_STEPS = {
    "embed_token": (0, 4, (0, 100), "sample"),
    "rms_norm": (1, 1, (0, 30), "greedy"),
    "dense_block": (15, 3, (0, 100), "greedy"),
    "dense_block_gate_up": (13, 2, (0, 2500), "sample"),
    "dense_block_lm_head": (34, 5, (1, 7), "sample"),
    "rope": (3, 2, (0, 65), "greedy"),
    "append": (20, 3, (1, 9), "sample"),
    "scores": (6, 3, (5, 2), "greedy"),
    "exp_sums": (7, 4, (4, 0), "sample"),
    "probs": (8, 4, (4, 1), "sample"),
    "context": (9, 3, (0, 40), "greedy"),
    "residual": (11, 2, (0, 50), "sample"),
    "swiglu": (14, 1, (0, 700), "greedy"),
    "penalty": (35, 5, (0, 216), "penalty"),
    "chunk_argmax": (36, 3, (0, 1), "greedy"),
    "sample_weights": (37, 4, (0, 30), "sample"),
    "masked_sums": (39, 4, (0, 0), "sample"),
    "bisect": (40, 3, (0, 1), "sample"),
    "pick": (74, 4, (0, 1), "sample"),
    "pick_token": (75, 3, (0, 0), "sample"),
    "next": (76, 5, (0, 0), "sample"),
    "match": (77, 3, (0, 0), "stop"),
    "gen": (78, 5, (0, 1), "stop"),
}


def run() -> dict:
    out: dict = {"batches": {}}
    for hardfork in ("cancun", "prague"):
        out["batches"][hardfork] = measure(hardfork, games=hardfork == "prague", out=out)
    b = out["batches"]["cancun"][100]
    out["input_bytes_per_leaf"] = INPUT_BYTES
    out["target_per_leaf"] = TARGET_PER_LEAF
    out["meets_target"] = b["per_leaf_without_input_calldata"] <= TARGET_PER_LEAF
    # One transaction per result = a batch of one leaf, measured in the same run.
    out["ratio_one_tx_per_result_vs_batched_100"] = round(out["batches"]["cancun"][1]["gas"] / b["per_leaf"], 1)
    return out


def measure(hardfork: str, games: bool, out: dict) -> dict:
    """Post batches on a fresh anvil; with `games`, also play the games."""
    input_gas_per_byte = 16 if hardfork == "cancun" else 40  # the inputs are non-zero bytes
    roles = ("owner", "coordinator", "challenger", "node1", "node2", "node3")
    with ProtocolNet.start(roles, ProtocolParams(), hardfork=hardfork) as net:
        w3, c, params = net.w3, net.contracts, net.params
        owner, coordinator, challenger = (net.senders[r] for r in roles[:3])
        nodes = [net.senders[r] for r in roles[3:]]
        programs = {"toy": toy_program()}
        for k in (576, 1536):
            programs[f"dot{k}"] = wide_program(k)
        programs["dense1536"] = dense_program(1536)
        model_ids = {}
        for name, program in programs.items():
            owner.call(c["ModelRegistry"].functions.register_model(name, program.model_root, program.num_ops, 1000))
            model_ids[name] = c["ModelRegistry"].functions.model_id_by_name(name).call()
        for role in roles[3:]:
            net.stake(role, 2 * params.min_stake)
        net.bond("challenger", 10**19)

        rollup, chain_id = c["ResultRollup"], w3.eth.chain_id

        def leaf(trace, model, node, job, input_bytes=INPUT_BYTES):
            data = bytes((job + i) % 251 + 1 for i in range(input_bytes)) if input_bytes else trace.job.to_bytes()
            raw = ResultLeaf(job_id(job), model_ids[model], trace.input_root, trace.output_root,
                             node.address, input=data)
            return raw.signed(node.account.key, chain_id, rollup.address)

        toy = programs["toy"]
        x = toy_job(11)
        honest = Trace.of(toy, x)
        batches = {}
        for n in (1, 10, 100):
            leaves = [leaf(honest, "toy", nodes[i * 3 // n], 1000 * n + i) for i in range(n)]  # grouped by node, as a coordinator posts them
            batch = Batch(leaves)
            receipt = coordinator.call(rollup.functions.post_batch(*batch.calldata))
            per_leaf = receipt["gasUsed"] / n
            batches[n] = {"gas": receipt["gasUsed"], "per_leaf": round(per_leaf),
                          "per_leaf_without_input_calldata": round(per_leaf - input_gas_per_byte * INPUT_BYTES)}
        if not games:
            return batches

        # A full game: node 0 cheats deep inside the toy program.
        bad = corrupted_trace(toy, x, 1, 0, 33, delta=120)
        bleaf = leaf(bad, "toy", nodes[0], 1, input_bytes=0)
        batch = Batch([bleaf])
        coordinator.call(rollup.functions.post_batch(*batch.calldata))
        batch_id = rollup.functions.batch_count().call()
        out["game"] = play(w3, c, batch_id, batch, nodes[0], challenger, bad, honest, toy)

        # One-steps of realistic widths: an honest node defends, the challenger steps.
        steps = {}
        for k in (576, 1536):
            program = programs[f"dot{k}"]
            xk = toy_job(5, tokens=k - 10)
            good = Trace.of(program, xk)
            wrong = corrupted_trace(program, xk, 1, 0, 17, delta=5)
            wleaf = leaf(good, f"dot{k}", nodes[1], 50 + k, input_bytes=0)
            wbatch = Batch([wleaf])
            coordinator.call(rollup.functions.post_batch(*wbatch.calldata))
            bid = rollup.functions.batch_count().call()
            g = play(w3, c, bid, wbatch, nodes[1], challenger, good, wrong, program)
            steps[f"dot_k{k}"] = g["moves"]["step"]
            assert g["outcome"] == "node won", g
        # A DENSE reading a k = 1536 int8 activation row of the state (op 0's output).
        program = programs["dense1536"]
        xk = toy_job(5, tokens=30)
        good = Trace.of(program, xk)
        wrong = corrupted_trace(program, xk, 2, 0, 17, delta=5)
        wleaf = leaf(good, "dense1536", nodes[1], 77, input_bytes=0)
        wbatch = Batch([wleaf])
        coordinator.call(rollup.functions.post_batch(*wbatch.calldata))
        bid = rollup.functions.batch_count().call()
        g = play(w3, c, bid, wbatch, nodes[1], challenger, good, wrong, program)
        assert g["outcome"] == "node won", g
        steps["dense_k1536_state"] = g["moves"]["step"]
        out["toy_step"] = out["game"]["moves"]["step"]
        out["one_step"] = steps

        # The decoder: an honest node defends one element of each op class.
        decoder = toy_decoder_program()
        owner.call(c["ModelRegistry"].functions.register_model(decoder.name, decoder.model_root, decoder.num_ops, 1000))
        model_ids[decoder.name] = c["ModelRegistry"].functions.model_id_by_name(decoder.name).call()
        traces = {kind: Trace.of(decoder, toy_decoder_job(kind)) for kind in ("greedy", "sample", "stop", "penalty")}
        decoder_steps = {}
        for n, (name, (j, step, (r, col), kind)) in enumerate(DECODER_STEPS.items()):
            good = traces[kind]
            if not name.startswith(OP_NAMES[decoder.ops[j].code]):   # the template moved: fix DECODER_STEPS
                raise SystemExit(f"bench.gas: template op {j} is {OP_NAMES[decoder.ops[j].code]}, not {name}")
            wrong = corrupted_trace(decoder, good.job, step * decoder.num_ops + j + 1, r, col, delta=1)
            wleaf = leaf(good, decoder.name, nodes[2], 9000 + n, input_bytes=0)
            wbatch = Batch([wleaf])
            coordinator.call(rollup.functions.post_batch(*wbatch.calldata))
            bid = rollup.functions.batch_count().call()
            g = play(w3, c, bid, wbatch, nodes[2], challenger, good, wrong, decoder)
            assert g["outcome"] == "node won", (name, g)
            decoder_steps[name] = g["moves"]["step"]
        out["decoder_one_step"] = decoder_steps
        out["largest_one_step_under_5M"] = max(list(steps.values()) + list(decoder_steps.values())) < 5_000_000
    return batches


def play(w3, c, batch_id, batch, node, challenger, node_trace, chal_trace, program) -> dict:
    game = c["DisputeGame"]
    receipt = challenger.call(game.functions.challenge(*batch.challenge_args(batch_id, 0, program.model_header())))
    gid = game.functions.game_count().call()
    final, played = play_game(GameClient(game, node), GameClient(game, challenger), gid, node_trace, chal_trace)
    moves, counts = {"challenge": receipt["gasUsed"]}, {"challenge": 1}
    for name, r in played:
        moves[name] = max(moves.get(name, 0), r["gasUsed"])
        counts[name] = counts.get(name, 0) + 1
    outcome = "node won" if final["status"] == player.NODE_WON else "challenger won"
    return {"outcome": outcome, "moves": moves, "move_counts": counts, "rounds": sum(counts.values()),
            "total_gas": receipt["gasUsed"] + sum(r["gasUsed"] for _, r in played)}


def report(result: dict) -> None:
    print("batch posting (ResultRollup.post_batch), %d input bytes per leaf" % INPUT_BYTES)
    print(f"{'hardfork':<9} {'leaves':>7} {'gas':>10} {'gas/leaf':>9} {'w/o input calldata':>19}")
    for hardfork, batches in result["batches"].items():
        for n, b in batches.items():
            print(f"{hardfork:<9} {n:>7} {b['gas']:>10} {b['per_leaf']:>9} {b['per_leaf_without_input_calldata']:>19}")
    print(f"target <= {TARGET_PER_LEAF} gas/leaf at 100 leaves (16 gas/byte calldata): "
          f"{verdict(result['meets_target'])}; one tx per result would cost "
          f"{result['ratio_one_tx_per_result_vs_batched_100']}x more per result")
    g = result["game"]
    print(f"\nfull game against a cheating node: {g['outcome']}, {g['rounds']} transactions, {g['total_gas']} gas")
    for name, gas in g["moves"].items():
        print(f"  {name:<14} {gas:>9} gas (max of {g['move_counts'][name]})")
    print("\none-step (StepVerifier via DisputeGame.step):")
    for name, gas in result["one_step"].items():
        print(f"  {name:<14} {gas:>9} gas")
    print("\none-step of each decoder op class (toy decoder, SmolLM2's widths):")
    for name, gas in result["decoder_one_step"].items():
        print(f"  {name:<19} {gas:>9} gas")
    print(f"largest one-step under 5M gas: {result['largest_one_step_under_5M']}")


def main(argv=None) -> int:
    return run_cli(argv, __doc__, run, report,
                   passed=lambda r: r["meets_target"] and r["largest_one_step_under_5M"])


if __name__ == "__main__":
    sys.exit(main())
