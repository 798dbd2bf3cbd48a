"""The model registry (opinfer/models): each spec agrees with its installed
files and its program, node and challenger refuse through one rule, and a
model added as a spec plus its parts runs on both without a service edit."""

import json

import numpy as np
import pytest

from opinfer import models
from opinfer.models import JobRefused, ModelSpec, Runtime, UnknownModel
from opinfer.semantics.jobinput import JobInput
from opinfer.trace.outputs import tensor_root
from opinfer.trace.testing import TOY_TOKENS, toy_job, toy_program


def test_registry_by_name_and_kind():
    assert sorted(models.names()) == ["all-minilm-l6-v2", "smollm2-135m-instruct"]
    assert [s.name for s in models.by_kind("chat")] == ["smollm2-135m-instruct"]
    assert [s.name for s in models.by_kind("embedding")] == ["all-minilm-l6-v2"]
    assert models.get("smollm2-135m-instruct").sampling.temperature == 0.2
    with pytest.raises(UnknownModel, match="no model named 'gpt-4'"):
        models.get("gpt-4")
    with pytest.raises(ValueError, match="already registered"):
        models.register(ModelSpec(name="all-minilm-l6-v2", kind="chat", vocab=1, dimensions=1, context=1, hooks="x"))
    with pytest.raises(ValueError, match="kind must be"):
        ModelSpec(name="x", kind="vision", vocab=1, dimensions=1, context=1, hooks="x")


def test_specs_match_the_installed_files_and_programs():
    from opinfer.models.minilm import program as minilm_program
    from opinfer.models.minilm import weights as minilm_weights
    from opinfer.models.smollm2 import program as smollm2_program
    from opinfer.models.smollm2.gguf import read_index

    mini, smol = models.get("all-minilm-l6-v2"), models.get("smollm2-135m-instruct")
    cfg = json.loads((minilm_weights.model_dir() / "config.json").read_text())
    assert (mini.vocab, mini.dimensions, mini.context) == (cfg["vocab_size"], cfg["hidden_size"],
                                                          cfg["max_position_embeddings"])
    meta, _ = read_index(_gguf())
    assert (smol.vocab, smol.dimensions) == (meta["llama.vocab_size"], meta["llama.embedding_length"])
    assert smol.context <= meta["llama.context_length"]
    # The programs' names and committed limits are the specs'.
    assert (minilm_program.NAME, smollm2_program.NAME) == (mini.name, smol.name)
    limits = smollm2_program.limits()
    assert (limits.positions, limits.vocab) == (smol.context, smol.vocab) == (smollm2_program.MAX_CONTEXT, smol.vocab)
    assert "<|im_start|>" in smol.chat_template() and smol.encode("hi") == smol.tokenizer().encode_ordinary("hi")
    with pytest.raises(ValueError, match="no chat template"):
        mini.chat_template()


def _gguf():
    from opinfer.models.smollm2.gguf import find_gguf_path

    return find_gguf_path()


@pytest.mark.parametrize("name,job,why", [
    ("all-minilm-l6-v2", JobInput((1, 2), max_tokens=3), "max_tokens 0"),
    ("all-minilm-l6-v2", JobInput((1,) * 513), "513 tokens > 512 positions"),
    ("all-minilm-l6-v2", JobInput((30522,)), r"\[0, 30522\)"),
    ("smollm2-135m-instruct", JobInput((1, 2), max_tokens=0), "max_tokens >= 1"),
    ("smollm2-135m-instruct", JobInput((49152,), max_tokens=1), "outside the vocabulary"),
    ("smollm2-135m-instruct", JobInput((1,) * 2000, max_tokens=2098), "exceeds the context of 4096"),
    ("smollm2-135m-instruct", JobInput((1,), max_tokens=4096), "between 1 and 4095"),
    ("smollm2-135m-instruct", JobInput((1, 2), max_tokens=4, temperature_milli=2001), "at most 2000"),
])
def test_node_and_challenger_refuse_by_the_spec(name, job, why):
    """One rule: the spec refuses, the node says BadJob (HTTP 400), the challenger Unverifiable."""
    from challenger.errors import Unverifiable
    from challenger.executors import ModelExecutor
    from node.engines import BadJob, Engine

    spec = models.get(name)
    with pytest.raises(JobRefused, match=why):
        spec.check(job)
    sentinel = object()   # neither side may build the engine to refuse a job
    node = Engine(spec, engine=sentinel).run_many([job])[0]
    challenger = ModelExecutor(spec, engine=sentinel).output_roots([job])[0]
    assert isinstance(node, BadJob) and isinstance(challenger, Unverifiable)
    assert str(node) in str(challenger)


def test_both_context_ends_are_accepted():
    models.get("smollm2-135m-instruct").check(JobInput((1,) * 2000, max_tokens=2097))   # 4096 positions
    models.get("smollm2-135m-instruct").check(JobInput((1,), max_tokens=4095))          # the most new tokens
    models.get("all-minilm-l6-v2").check(JobInput((1,) * 512))


# ---- adding a model: a spec and its parts (here this module), nothing in node/ or challenger/

def check(job):
    if len(job.tokens) != TOY_TOKENS:
        raise JobRefused(f"toy-dot takes {TOY_TOKENS} tokens")


def load_engine():
    return toy_program()


def run_batch(engine, jobs):
    return [(out := engine.run(job)[-1], {"output": [int(v) for v in np.asarray(out).reshape(-1)]}) for job in jobs]


def load_program():
    return toy_program()


def test_a_new_model_runs_on_node_and_challenger(monkeypatch):
    from challenger.executors import ModelExecutor
    from node.engines import BadJob, Engine

    spec = ModelSpec(name="toy-dot", kind="embedding", vocab=256, dimensions=1, context=TOY_TOKENS, hooks=__name__)
    monkeypatch.setitem(models._registry, spec.name, spec)
    assert models.get("toy-dot") is spec and spec in models.by_kind("embedding")
    jobs = [toy_job(0), toy_job(1), JobInput((1, 2))]
    node, challenger = Engine(spec).run_many(jobs), ModelExecutor(spec).output_roots(jobs)
    for k in (0, 1):
        assert tensor_root(node[k][0]) == challenger[k] == tensor_root(toy_program().run(jobs[k])[-1])
    assert isinstance(node[2], BadJob) and f"{TOY_TOKENS} tokens" in str(challenger[2])
    assert Runtime(spec).program().model_root == toy_program().model_root
