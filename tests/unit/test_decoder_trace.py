"""The decoder's bounded-memory trace equals the eager trace bit for bit.

DecoderTrace hashes the KV caches incrementally and replays steps on
demand; every root, state root, state proof, tensor and witness must be the
eager Trace's (which hashes and keeps every tensor), including dishonest
traces whose cache history was rewritten (corrupted_trace) or that show one
wrong tensor (patched_trace).
"""

import numpy as np
import pytest

from opinfer.models.smollm2.testing import toy_decoder, toy_decoder_job
from opinfer.semantics import merkle, ops
from opinfer.trace.decoder_trace import AppendTree, DecoderTrace
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, patched_trace


def test_append_tree_roots_equal_padded_merkle_roots():
    leaves = [merkle.keccak(bytes([i])) for i in range(40)]
    pad = merkle.keccak(b"pad")
    tree = AppendTree(pad)
    for n, leaf in enumerate(leaves, start=1):
        tree.append(leaf)
        assert tree.root() == merkle.root(leaves[:n], pad=pad)
        assert tree.root(tail=leaves[0]) == merkle.root(leaves[:n] + [leaves[0]], pad=pad)


@pytest.fixture(scope="module", params=["greedy", "sample", "stop"])
def pair(request):
    program, _ = toy_decoder()
    job = toy_decoder_job(request.param, tokens=20, max_tokens=5)   # 24 steps: the V^T cache passes a chunk
    return Trace(program, job, program.run(job)), Trace.of(program, job)


def test_roots_state_roots_and_proofs_are_the_eager_traces(pair):
    eager, lazy = pair
    assert isinstance(lazy, DecoderTrace)
    assert lazy._state_leaves == eager._state_leaves
    for i in (0, 1, 75, 700, lazy.n - 1, lazy.n):
        assert lazy.state_root(i) == eager.state_root(i) == eager.state_tree(i)[-1][0]
        for position in sorted({0, i // 3, i}):
            assert lazy.state_proof(i, position) == merkle.proof(eager.state_tree(i), position)


def test_replayed_tensors_and_witnesses_are_the_eager_traces(pair):
    eager, lazy = pair
    rng = np.random.default_rng(1)
    for i in [int(v) for v in rng.integers(0, lazy.n, size=25)] + [lazy.n - 1]:
        out = eager.tensors[i + 1]
        r, c = int(rng.integers(out.shape[0])), int(rng.integers(out.shape[1]))
        assert np.array_equal(lazy.tensors[i + 1], out)
        assert lazy.witness(i, r, c) == eager.witness(i, r, c)
        assert lazy.trees[i + 1].root == eager.trees[i + 1].root


def test_dishonest_decoder_traces_match_their_eager_twins(pair):
    eager, lazy = pair
    program, job = eager.program, eager.job
    k_cache = next(j for j, op in enumerate(program.ops) if op.code == ops.APPEND)
    position = 10 * program.num_ops + k_cache + 1       # a cached K row, copied by every later step

    def corrupt(i, out):
        if i + 1 == position:
            out = out.copy()
            out[2, 5] += 7
        return out
    rewritten = Trace(program, job, program.run(job, corrupt))
    assert corrupted_trace(program, job, position, 2, 5, 7)._state_leaves == rewritten._state_leaves
    shown, shown_eager = patched_trace(lazy, position, 2, 5, 7), patched_trace(eager, position, 2, 5, 7)
    assert shown._state_leaves == shown_eager._state_leaves
    later = position + program.num_ops - 1               # the next step's K cache: built from the honest row
    assert np.array_equal(shown.tensors[later + 1], eager.tensors[later + 1])
    assert shown.witness(later, 2, 5) == shown_eager.witness(later, 2, 5)
