"""The real models as op programs: the same bits as the fast engines, a
deterministic model root, and witnesses that read what the rules read."""

import numpy as np
import pytest

from bench.corpus import SENTENCES
from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.engine import IntMiniLM
from opinfer.models.minilm.program import build_program
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.state import Trace


@pytest.fixture(scope="module")
def model():
    return IntMiniLM.build()


@pytest.fixture(scope="module")
def program(model):
    return build_program(model)


def test_minilm_program_computes_the_engines_bits(model, program):
    for text in SENTENCES[:8]:
        ids = fw.encode(text)
        out = program.run(JobInput(tuple(int(i) for i in ids)))[-1]
        assert out.shape == (1, 384) and np.array_equal(out[0], model.forward(ids))


def test_model_root_is_deterministic_and_binds_every_weight(model, program):
    again = build_program(IntMiniLM.build())
    assert again.model_root == program.model_root
    tampered = build_program(model)
    tampered.weights[5] = tampered.weights[5].copy()
    tampered.weights[5][0, 0] += 1
    assert tampered.model_root != program.model_root


def test_trace_witness_rows_are_the_rows_each_op_reads(program):
    job = JobInput(tuple(int(i) for i in fw.encode("A short job.")))
    trace = Trace.of(program, job)
    assert trace.n == program.num_ops and trace.input_root != trace.output_root
    for i in range(trace.n):
        rows, cols = trace.tensors[i + 1].shape
        assert trace.witness(i, rows - 1, cols - 1)  # the last element of every op has a witness
        assert trace.witness(i, rows, 0) == b""      # padding needs none


def test_stop_words_move_the_tokens_but_not_the_embedding(program):
    # T_0's slot is L + tokens_at wide, so stop words (meaningless to an
    # encoder) shift where the tokens start without changing the output.
    plain = program.run(JobInput((101, 2023, 102)))
    with_stops = program.run(JobInput((101, 2023, 102), stop_sequences=((5,), (7, 8))))
    assert with_stops[0].shape[1] == plain[0].shape[1] + 5
    assert np.array_equal(with_stops[-1], plain[-1])


ROOT_SCRIPT = """
from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.program import default_program
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.state import Trace
p = default_program()
t = Trace.of(p, JobInput(tuple(int(i) for i in fw.encode("Same bits in every process."))))
print(p.model_root.hex(), t.output_root.hex(), t.state_root(t.n).hex())
"""


def test_roots_are_identical_across_processes_and_thread_counts():
    import os
    import subprocess
    import sys

    outs = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        run = subprocess.run([sys.executable, "-c", ROOT_SCRIPT], env=env, capture_output=True, text=True, check=True)
        outs.add(run.stdout.strip())
    assert len(outs) == 1 and len(next(iter(outs)).split()) == 3
