"""The llama-family GGUF path (opinfer/models/llama): architecture and sizes from the file's
metadata, on small random-weight files the gguf package writes (fixtures.SHAPES: llama
with multi-head attention; a Mistral-like llama file with grouped-query attention and an
untied head; qwen2 with Q/K/V biases, grouped-query attention and NEOX RoPE order).
For each: the program built from the file and the fast engine give the same tokens,
bit for bit, on greedy, sampled, stopped and penalised jobs; a node serves it and signs
the program's output root; files outside the family are refused by name.
Their disputes on anvil: tests/contracts/test_llama_gguf_disputes.py."""

from __future__ import annotations

import numpy as np
import pytest

from opinfer.engine.sampling import SamplingParams
from opinfer.models.llama import build_from_gguf, read_config
from opinfer.models.llama.engine import IntLlama, neox_rows, reference_forward, rope, rope_tables, score_scale
from opinfer.models.llama.fixtures import SHAPES, Shape, write_gguf
from opinfer.models.llama.gguf import ModelFileError
from opinfer.semantics import ops
from opinfer.semantics.jobinput import JobInput


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return {key: write_gguf(folder / f"{key}.gguf", shape) for key, shape in SHAPES.items()}


@pytest.fixture(scope="module")
def built(files):
    """key -> (program, engine model) of each fixture file."""
    out = {}
    for key, path in files.items():
        program = build_from_gguf(path)
        print(f"\n{key}: {program.name} {program.num_ops} ops/step, model_root 0x{program.model_root.hex()}")
        out[key] = (program, IntLlama.build(path))
    return out


def jobs(vocab: int, program) -> dict[str, JobInput]:
    ids = tuple(int(t) for t in np.random.default_rng(vocab).integers(0, vocab, size=5))
    first = int(program.run(JobInput(ids, max_tokens=1))[-1][0, 0])
    return {"greedy": JobInput(ids, max_tokens=4),
            "sample": JobInput(ids, max_tokens=4, temperature_milli=900, top_p_q=52429, seed=(1 << 63) + 5),
            "stop": JobInput(ids, max_tokens=4, stop_sequences=((vocab - 1, vocab - 2), (first,))),
            "penalty": JobInput(ids, max_tokens=4, presence_q=-4096, frequency_q=8192, logit_bias=((5, 1280),))}


@pytest.mark.parametrize("key", SHAPES)
def test_sizes_come_from_the_metadata(files, built, key):
    shape, cfg = SHAPES[key], read_config(files[key])
    assert (cfg.arch, cfg.name, cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.ffn, cfg.vocab) == (
        shape.arch, shape.name, shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.ffn, shape.vocab)
    assert (cfg.qkv_bias, cfg.tied, cfg.rope) == (shape.qkv_bias, shape.tied, "neox" if shape.arch == "qwen2" else "normal")
    assert cfg.rope_theta == shape.rope_base and cfg.context_length == shape.context
    program, model = built[key]
    assert program.name == shape.name
    scores = next(op for op in program.ops if op.code == ops.SCORES)
    assert scores.params[:2] == (shape.hidden // shape.heads, shape.heads // shape.kv_heads)   # D, the GQA group
    sums = next(op for op in program.ops if op.code == ops.EXP_SUMS)
    assert sums.params[:2] == score_scale(shape.hidden // shape.heads)
    assert program.limits.positions == shape.context and program.limits.vocab == shape.vocab
    # a qwen2 block adds its biases in a RESIDUAL right after q|k|v: 2 more ops per step
    assert program.num_ops == 47 + (16 + shape.qkv_bias) * shape.layers
    after = program.ops[3]
    assert (after.code == ops.RESIDUAL) == shape.qkv_bias
    if shape.qkv_bias:
        bias = program.weights[after.slots[1].ref & ((1 << 128) - 1)]
        assert np.array_equal(bias[0], model.layers[0].qkv_bias) and np.abs(bias).max() > 0
    head = [op for op in program.ops if op.code == ops.DENSE_BLOCK][-1]
    embed = program.ops[0]
    assert (head.slots[1].ref == embed.slots[2].ref) == shape.tied          # the LM head's blocks


@pytest.mark.parametrize("key", SHAPES)
def test_engine_and_program_agree_bit_for_bit(built, key):
    program, model = built[key]
    ids = list(np.random.default_rng(1).integers(0, model.vocab, size=7))
    assert np.array_equal(reference_forward(model, ids), model.session(16).forward(ids, all_logits=True))
    outputs = set()
    for kind, job in jobs(model.vocab, program).items():
        out = program.run(job)[-1]
        gen = model.session(16).generate(list(job.tokens), job.max_tokens, sampler=SamplingParams.of_job(job),
                                         stop_sequences=job.stop_sequences)
        want = gen.ids + [-1] * (job.max_tokens - len(gen.ids)) + [int(gen.finish_reason == "stop")]
        assert out.tolist() == [want], kind
        outputs.add(tuple(gen.ids))
        if kind == "stop":
            assert gen.finish_reason == "stop" and len(gen.ids) == 1
    assert len(outputs) > 1            # the jobs' sampling and penalties change the tokens


@pytest.mark.parametrize("key", SHAPES)
def test_a_file_is_served_by_a_node_and_batched_like_alone(files, built, key):
    """gguf_spec: the file as a chat model; a node runs it (its scheduler, the family's
    Decoder) and signs the program's output root; a batch of jobs through the Runtime
    gives each job's tokens alone; register_gguf puts it in the registry."""
    from node.app import ExecuteRequest, Node
    from node.engines import Engine
    from opinfer import models
    from opinfer.models.llama.parts import gguf_spec, register_gguf
    from opinfer.trace.state import Trace

    program, _ = built[key]
    spec = gguf_spec(files[key], price_wei=1000)
    shape = SHAPES[key]
    assert (spec.name, spec.vocab, spec.dimensions, spec.context) == (shape.name, shape.vocab, shape.hidden,
                                                                      shape.context)
    assert spec.load_program().model_root == program.model_root
    engine = Engine(spec).load()
    todo = list(jobs(spec.vocab, program).values())
    for job, (out, payload) in zip(todo, engine.run_many(todo)):
        assert np.array_equal(out, engine.run(job)[0]) and np.array_equal(out, program.run(job)[-1])
    node = Node("0x" + "11" * 32, 31337, "0x" + "22" * 20, {spec.name: 7}, engines_by_name={spec.name: engine})
    job = todo[1]
    try:
        answer = node.execute(ExecuteRequest(job_id="0x" + "00" * 15 + "01", model=spec.name, model_id=7,
                                             input="0x" + job.to_bytes().hex()))
    finally:
        node.close()
    assert answer["output_root"] == "0x" + Trace.of(program, job).output_root.hex()
    with pytest.raises(Exception, match="vocabulary"):
        engine.check(JobInput((shape.vocab,), max_tokens=1))
    try:
        assert models.get(register_gguf(files[key]).name).load_program().model_root == program.model_root
    finally:
        models.unregister(spec.name)
    assert spec.name not in models.names()


def test_neox_rows_turn_rotate_half_rope_into_adjacent_pairs():
    """qwen2's Q/K rows permuted per head (neox_rows), rotated in adjacent pairs, give
    rotate-half RoPE of the file's order, permuted: q.k is unchanged."""
    heads, D, rows = 3, 16, 5
    rng = np.random.default_rng(0)
    x = rng.integers(-20000, 20000, size=(rows, heads * D))
    cos, sin = rope_tables(rows, D, 10000.0)
    perm = neox_rows(heads, D)
    adjacent = rope(x[:, perm].reshape(rows, heads, D), cos, sin).reshape(rows, -1)
    half = D // 2
    xs = x.reshape(rows, heads, D)
    a, b = xs[..., :half], xs[..., half:]
    c, s, r = cos[:, None, :], sin[:, None, :], 1 << 13
    neox = np.concatenate([(a * c - b * s + r) >> 14, (a * s + b * c + r) >> 14], -1).reshape(rows, -1)
    assert np.array_equal(adjacent, neox[:, perm])


def test_score_scale():
    assert score_scale(64) == (1, 13) and score_scale(16) == (1, 12) and score_scale(256) == (1, 14)
    mult, shift = score_scale(128)
    assert shift == 26 and abs(mult / (1 << 16) - 128 ** -0.5) < 1e-5


@pytest.mark.parametrize("change,message", [
    (dict(arch="gpt2"), "architecture 'gpt2' is not a llama-family decoder"),
    (dict(arch="qwen3"), "architecture 'qwen3'"),
    (dict(matrices="F16"), "is F16; this library takes Q4_1 or Q8_0"),
    (dict(heads=3, kv_heads=2, hidden=96), "KV heads the heads"),
    (dict(heads=33, kv_heads=33, hidden=2112), "width 2112: at most 2048"),
])
def test_files_outside_the_family_are_refused_by_name(tmp_path, change, message):
    shape = Shape(**{**SHAPES["mha"].__dict__, **change})
    path = tmp_path / "other.gguf"
    write_gguf(path, shape)
    with pytest.raises(ModelFileError, match=message):
        build_from_gguf(path)


@pytest.mark.parametrize("key,value,message", [("llama.expert_count", 4, "mixture of experts"),
                                               ("llama.rope.scaling.type", "yarn", "RoPE scaling"),
                                               ("llama.attention.sliding_window", 128, "sliding-window"),
                                               ("llama.attention.key_length", 32, "key_length = 32")])
def test_keys_the_family_does_not_run_are_refused(tmp_path, key, value, message):
    path = write_gguf(tmp_path / "other.gguf", Shape(**{**SHAPES["mha"].__dict__, "extra": ((key, value),)}))
    with pytest.raises(ModelFileError, match=message):
        read_config(path)


@pytest.mark.parametrize("key", SHAPES)
def test_the_engine_rebuilt_from_the_program_alone(built, key):
    """llama.built.model_from_program: the program's integers give back an engine that
    computes the same tokens, and whose program has the same root (what a node loading
    a built program file runs)."""
    from opinfer.models.llama.built import model_from_program
    from opinfer.models.llama.program import build_program

    program, model = built[key]
    again = model_from_program(program)
    assert build_program(again, program.name, program.limits.positions).model_root == program.model_root
    for job in jobs(model.vocab, program).values():
        runs = [m.session(16).generate(list(job.tokens), job.max_tokens, sampler=SamplingParams.of_job(job),
                                       stop_sequences=job.stop_sequences) for m in (model, again)]
        assert runs[0] == runs[1]


def float_logits(path, ids) -> np.ndarray:
    """The file's model in float64 from gguf's own dequantisation, as llama.cpp computes it:
    RoPE over adjacent pairs (llama) or halves (qwen2, the file's own row order), biases,
    grouped-query attention, the untied head when there is one."""
    import gguf

    cfg = read_config(path)
    w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
         for t in gguf.GGUFReader(str(path)).tensors}
    nh, nkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    norm = lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_eps) * g  # noqa: E731
    T = len(ids)
    inv = cfg.rope_theta ** (-np.arange(0, D, 2) / D)
    ang = np.arange(T)[:, None] * inv[None, :]                     # [T, D/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):                                                   # [T, heads, D]
        if cfg.rope == "neox":
            a, b = x[..., :D // 2], x[..., D // 2:]
            return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
        out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
        return out

    x = w["token_embd.weight"][list(ids)]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        h = norm(x, w[p + "attn_norm.weight"])
        q, k, v = (h @ w[f"{p}attn_{n}.weight"].T + (w[f"{p}attn_{n}.bias"] if cfg.qkv_bias else 0) for n in "qkv")
        q, k, v = rope(q.reshape(T, nh, D)), rope(k.reshape(T, nkv, D)), v.reshape(T, nkv, D)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(D) + mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum("htu,uhd->thd", a, v).reshape(T, nh * D) @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    head = w["token_embd.weight"] if cfg.tied else w["output.weight"]
    return norm(x, w["output_norm.weight"]) @ head.T


@pytest.mark.parametrize("key", SHAPES)
def test_the_integer_model_tracks_the_float_model_of_the_file(files, built, key):
    """The integer engine against the file computed in float64 (gguf's dequantisation,
    llama.cpp's RoPE order for the architecture, biases, GQA, the untied head): a wrong
    row order, scale or bias would show here, where the program and the engine would
    still agree with each other."""
    from opinfer.models.llama.engine import LOGIT_BITS

    _, model = built[key]
    ids = [int(t) for t in np.random.default_rng(7).integers(0, model.vocab, size=24)]
    ours = reference_forward(model, ids) / (1 << LOGIT_BITS)
    ref = float_logits(files[key], ids)
    for row, (a, b) in enumerate(zip(ours, ref)):
        assert np.corrcoef(a, b)[0, 1] > 0.995, (key, row)
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
