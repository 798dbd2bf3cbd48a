"""Jobs outside the limits a model's engine enforces off-chain (issue 14,
point 5), carried out on anvil: a node signs such a job, an honest
challenger disputes it and wins in the challenge itself
(StepVerifier.job_shape says "not well formed"). Before, job_shape accepted
them and a later step reverted, so the honest challenger lost on time.

The limits live in the model root (JobLimits in the steps_mode word); the
real models' limits are disputed in test_model_disputes.py (MiniLM) and
test_smollm2_disputes.py (SmolLM2); here toy programs carry each limit.
"""

from __future__ import annotations

import numpy as np
import pytest
from brownie import chain

from conftest import ACTIVE, CHALLENGER_WON, game_state, post
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.program import PER_POSITION, JobLimits, Program, job_shape
from opinfer.semantics.tensor import TensorTree
from opinfer.trace.leaf import ResultLeaf
from opinfer.trace.testing import toy_program

ETHER = 10**18
SEP = 0xFFFF


def limited(name: str, steps_mode: int, limits: JobLimits | None) -> Program:
    toy = toy_program()
    return Program(toy.ops, toy.weights, toy.widths, steps_mode, name, limits)


ENCODER = limited("toy-encoder-limited", 0, JobLimits(positions=16, vocab=30000, max_temperature=2000, min_new=0,
                                                       max_new=0, max_stop_words=0))
DECODER = limited("toy-decoder-limited", PER_POSITION, JobLimits(positions=20, vocab=49152, max_temperature=2000,
                                                                 min_new=1))
OPEN = limited("toy-open", 0, None)


def words(tokens, new=0, temperature=0, stops=()) -> list[int]:
    return [1, len(tokens), new, temperature, 0xFFFF, 0, 0, 0, 7, len(stops), *stops, *tokens]


def raw(w: list[int]) -> bytes:
    return np.asarray(w, dtype=">u2").tobytes()


# (program, input words, well formed): each limit just inside and just outside.
CASES = [
    (ENCODER, words([5] * 16, temperature=2000), True),
    (ENCODER, words([5] * 17), False),                          # positions (MiniLM's position table)
    (ENCODER, words([29999, 30000]), False),                    # token id >= vocabulary
    (ENCODER, words([1, 2], temperature=2001), False),          # temperature
    (ENCODER, words([1, 2], new=1), False),                     # new tokens for an embedding
    (ENCODER, words([1, 2], stops=[3, SEP]), False),            # stop words for an embedding
    (DECODER, words([3] * 10, new=11, stops=[9, SEP]), True),   # 10 + 11 - 1 = 20 positions
    (DECODER, words([3] * 10, new=12), False),                  # context beyond the RoPE table
    (DECODER, words([3] * 10, new=0), False),                   # no new token
    (DECODER, words([49152]), False),                           # token id >= vocabulary
    (OPEN, words([1, 2], stops=[3, 4]), False),                 # unterminated stop sequence
    (OPEN, words([1, 2], stops=[SEP, 3, SEP]), False),          # empty stop sequence
    (OPEN, words([1, 2], stops=[3, SEP, SEP]), False),          # empty stop sequence
    (OPEN, words([1, SEP]), False),                             # prompt token 0xFFFF
    (OPEN, words([1, 65534], new=60000, temperature=65535, stops=[3, SEP, 4, 5, SEP]), True),
]


@pytest.fixture(scope="module")
def model_ids(system, deployer):
    return {p.name: system.registry.register_model(p.name, p.model_root, p.num_ops, 0, {"from": deployer}).return_value
            for p in (ENCODER, DECODER, OPEN)}


def test_python_twin_matches_each_case():
    for program, w, ok in CASES:
        assert job_shape(program.mode_word, program.num_ops, raw(w))[0] == ok, w
        try:
            program.check_job(JobInput.from_bytes(raw(w)))
            assert ok
        except Exception:  # noqa: BLE001 - CommitmentError from either check
            assert not ok


def test_out_of_limit_jobs_lose_at_once(system, staked, coordinator, nodes, challengers, model_ids):
    """Every out-of-limit job's node loses in the challenge; every in-limit
    job's game starts normally (the node must open its trace)."""
    node = nodes[0]
    leaves = []
    for i, (program, w, _) in enumerate(CASES):
        data = raw(w)
        root = TensorTree.build(np.asarray(w, dtype=np.int64).reshape(1, -1)).root
        leaves.append(ResultLeaf(job_id=(500 + i).to_bytes(16, "big"), model_id=model_ids[program.name],
                                 input_root=root, output_root=b"\x05" * 32, node=node.address,
                                 input=data).signed(node.private_key, chain.id, system.rollup.address))
    batch_id, batch, _ = post(system, coordinator, leaves)
    lost = 0
    for i, (program, w, ok) in enumerate(CASES):
        tx = system.game.challenge(*batch.challenge_args(batch_id, i, program.model_header()),
                                   {"from": challengers[1]})
        g = game_state(system.game, tx.return_value)
        if ok:
            assert g["status"] == ACTIVE, w
            _, num_ops, job = job_shape(program.mode_word, program.num_ops, raw(w))
            assert (g["num_ops"], g["job"]) == (num_ops, job)
        else:
            assert g["status"] == CHALLENGER_WON, w
            assert tx.events["GameResolved"]["reason"] == "job outside the model's limits"
            lost += 1
        if lost == 1 and not ok:
            assert system.stake.slashable(node) == 0  # the first bad job takes the stake
    assert system.stake.bond(challengers[1]) == ETHER - sum(ok for _, _, ok in CASES) * system.params.challenge_bond
