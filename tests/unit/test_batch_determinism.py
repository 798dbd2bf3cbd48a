"""A job's output bits do not depend on what else runs in its batch.

Nodes may batch concurrent requests for throughput (minilm.forward_batch,
smollm2.generate_many); every op is exact and either row-local or per
sequence, so each job's output, and so its output root, is the one it gets
alone. Checked here for several batch compositions of both real models.
"""

import numpy as np
import pytest

from opinfer.engine.sampling import SamplingParams
from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.engine import IntMiniLM
from opinfer.models.smollm2.engine import default_model, generate_many
from opinfer.models.smollm2.tokenizer import load_tokenizer
from opinfer.trace.outputs import embedding_output, generation_output, tensor_root

SENTENCES = ["Optimistic verification trusts first and checks later.",
             "A cat.",
             "The challenger re-executes a sampled job and disputes any mismatch on chain, narrowing it by bisection."]


@pytest.fixture(scope="module")
def minilm():
    return IntMiniLM.build()


@pytest.mark.parametrize("composition", [[0], [0, 1, 2], [2, 0, 1, 0], [1, 1]])
def test_minilm_batch_compositions_give_each_sequence_its_own_bits(minilm, composition):
    alone = [minilm.forward(fw.encode(s)) for s in SENTENCES]
    batch = minilm.forward_batch([fw.encode(SENTENCES[k]) for k in composition])
    for k, vector in zip(composition, batch):
        assert np.array_equal(vector, alone[k])
        assert tensor_root(embedding_output(vector)) == tensor_root(embedding_output(alone[k]))


@pytest.fixture(scope="module")
def requests():
    tok = load_tokenizer()
    return [
        dict(ids=tok.encode("The capital of France is"), max_tokens=4),
        dict(ids=tok.encode("Once upon a time, in a small village"), max_tokens=5,
             sampler=SamplingParams(800, 60000, 99)),
        dict(ids=tok.encode("1, 2, 3,"), max_tokens=6, stop_sequences=[tok.encode(" 5")]),
    ]


@pytest.mark.parametrize("composition", [[0], [0, 1, 2], [2, 0], [1, 2, 1]])
def test_smollm2_batch_compositions_give_each_request_its_own_tokens(requests, composition):
    model = default_model()
    alone = []
    for r in requests:
        g = model.session().generate(r["ids"], r["max_tokens"], sampler=r.get("sampler"),
                                     stop_sequences=r.get("stop_sequences", ()))
        alone.append(generation_output(g.ids, g.finish_reason, r["max_tokens"]))
    batch = generate_many(model, [requests[k] for k in composition])
    for k, g in zip(composition, batch):
        got = generation_output(g.ids, g.finish_reason, requests[k]["max_tokens"])
        assert np.array_equal(got, alone[k])
        assert tensor_root(got) == tensor_root(alone[k])
