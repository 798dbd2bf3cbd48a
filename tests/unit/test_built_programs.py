"""Built programs as files, and engines rebuilt from nothing but their integers.

A network ships the built integer program (docs/quantisation.md): loading
must give the same model root, refuse a file whose contents or root differ,
and the engine rebuilt from the file must compute the calibrated engine's
bits.
"""

import numpy as np
import pytest

from opinfer.engine.sampling import SamplingParams
from opinfer.errors import CommitmentError, OpinferError
from opinfer.models.built import load_program, main, minilm_from_program, save_program
from opinfer.models.llama.built import model_from_program
from opinfer.models.minilm import weights as fw
from opinfer.models.minilm.engine import IntMiniLM
from opinfer.models.minilm.program import build_program
from opinfer.models.smollm2.testing import toy_decoder, toy_decoder_job


def test_minilm_round_trip_and_engine_from_the_file(tmp_path):
    model = IntMiniLM.build()
    program = build_program(model)
    path = tmp_path / "minilm.npz"
    assert save_program(program, path) == program.model_root
    loaded = load_program(path, expected_root=program.model_root)
    assert loaded.model_root == program.model_root and loaded.name == program.name
    engine = minilm_from_program(loaded)
    for text in ("Shipped as integers, computed the same everywhere.", "A cat."):
        ids = fw.encode(text)
        assert np.array_equal(engine.forward(ids), model.forward(ids))


def test_decoder_round_trip_and_engine_from_the_file(tmp_path):
    program, model = toy_decoder()
    path = tmp_path / "decoder.npz"
    save_program(program, path)
    engine = model_from_program(load_program(path, expected_root=program.model_root))
    for kind in ("greedy", "sample", "stop"):
        job = toy_decoder_job(kind, tokens=6, max_tokens=4)
        sampler = SamplingParams.of_job(job)
        runs = [m.session(64).generate(list(job.tokens), job.max_tokens, sampler=sampler,
                                       stop_sequences=job.stop_sequences) for m in (model, engine)]
        assert runs[0] == runs[1]


def test_a_file_with_other_contents_or_another_root_is_refused(tmp_path):
    program, _ = toy_decoder()
    path = tmp_path / "decoder.npz"
    save_program(program, path)
    with pytest.raises(CommitmentError, match="not the expected"):
        load_program(path, expected_root=b"\x01" * 32)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["w5"] = arrays["w5"].copy()
    arrays["w5"].flat[0] += 1                                  # one weight changed
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CommitmentError, match="the file says"):
        load_program(path)
    (tmp_path / "junk.npz").write_bytes(b"not a program")
    with pytest.raises(CommitmentError, match="not a built program"):
        load_program(tmp_path / "junk.npz")


def test_cli_names_the_problem(tmp_path, capsys):
    assert main(["save", "no-such-model", str(tmp_path / "x.npz")]) == 1
    assert "unknown model" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.npz")]) == 1
    assert "not a built program" in capsys.readouterr().err


def test_build_dispatches_a_file_to_the_model_that_accepts_it(tmp_path):
    """`opinfer model build`: the GGUF file goes to SmolLM2's loader, the safetensors folder
    to MiniLM's, a name to its package; anything else is refused with what it is."""
    from opinfer.models.build import BuildError, resolve
    from opinfer.models.smollm2.gguf import find_gguf_path

    assert [s.name for s in (resolve(str(find_gguf_path()))[0], resolve(str(fw.model_dir()))[0])] == \
        ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert resolve("all-minilm-l6-v2")[1] is None
    (tmp_path / "other.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    for source, message in ((tmp_path / "nope", "no model of that name"), (tmp_path, "neither a GGUF file"),
                            (tmp_path / "model.safetensors", "no model of that name")):
        with pytest.raises(BuildError, match=message):
            resolve(str(source))
    with pytest.raises(OpinferError, match="GGUF version 0 is not supported"):
        resolve(str(tmp_path / "other.gguf"))


def test_any_llama_gguf_builds_to_a_file_a_runtime_serves(tmp_path):
    """A GGUF file no model folder claims goes to the llama family's loader: `opinfer model
    build` writes its program (the family's root), and a Runtime loaded from that file alone
    computes the program's output."""
    from opinfer import models
    from opinfer.models import Runtime
    from opinfer.models.build import build_file
    from opinfer.models.llama.fixtures import Shape, write_gguf
    from opinfer.models.llama.program import build_from_gguf
    from opinfer.semantics.jobinput import JobInput

    path = write_gguf(tmp_path / "tiny.gguf", Shape(name="lifecycle-tiny-llama", seed=11))
    try:
        built = build_file(str(path), tmp_path / "tiny.npz")
        program = build_from_gguf(path)
        assert (built.name, built.model_root, built.num_ops) == (program.name, program.model_root, program.num_ops)
        runtime = Runtime.from_file(models.get(built.name), built.path, program.model_root)
        job = JobInput((1, 5, 9), max_tokens=3)
        assert np.array_equal(runtime.run(job)[0], program.run(job)[-1])
    finally:
        models.unregister("lifecycle-tiny-llama")


def test_a_program_file_alone_is_served_and_re_executed(tmp_path):
    """A node or challenger with only the program file of a llama-family model (no GGUF, no
    folder): the model is registered from the file, its refusal rule is the root's job limits,
    and both sides compute the program's output."""
    from challenger.errors import Unverifiable
    from challenger.executors import program_executors
    from node import engines
    from node.errors import BadJob
    from opinfer import models
    from opinfer.models.llama.fixtures import Shape, write_gguf
    from opinfer.models.llama.program import build_from_gguf
    from opinfer.semantics.jobinput import JobInput
    from opinfer.trace.outputs import tensor_root

    name = "lifecycle-file-only-llama"
    program = build_from_gguf(write_gguf(tmp_path / "f.gguf", Shape(name=name, seed=5)))
    save_program(program, tmp_path / "f.npz")
    (tmp_path / "f.gguf").unlink()                              # the file alone from here on
    try:
        assert engines.adopt_program_files([tmp_path / "f.npz"]) == [name]
        node = engines.load_file(name, tmp_path / "f.npz", program.model_root)
        challenger = program_executors({name: program.model_root}, [str(tmp_path / "f.npz")])[name]
        job = JobInput((3, 1, 4, 1), max_tokens=4, temperature_milli=700, seed=9)
        out = program.run(job)[-1]
        assert np.array_equal(node.run(job)[0], out) and challenger.output_root(job) == tensor_root(out)
        # a dispute trace takes its generated positions from the engine the file gave (or would
        # build them one at a time: docs/protocol.md, "Trace building time")
        from opinfer.trace.hints import generated_tokens

        assert generated_tokens(program, job) == [int(t) for t in out[0][:job.max_tokens - 1]]  # the last is never fed back
        spec = models.get(name)
        too_long = JobInput((1,) * spec.context, max_tokens=2)
        with pytest.raises(BadJob, match="exceeds the context"):
            node.check(too_long)
        with pytest.raises(Unverifiable):
            challenger.output_root(too_long)
    finally:
        engines.ENGINES.pop(name, None)
        models.unregister(name)
