"""Small llama-family GGUF files with random weights, written with the gguf package's
GGUFWriter (tests: every size read from the metadata, disputed on anvil).

`write_gguf(path, Shape(...))` writes a file as llama.cpp's converters lay it out:
token embeddings Q8_0, block matrices Q4_1 or Q8_0 (the gguf package's own
quantisers), norms and biases F32 or F16, `<arch>.*` hyperparameters, an optional
untied `output.weight`. SHAPES are the three the tests use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Shape:
    arch: str = "llama"
    name: str = "tiny-llama"
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 4
    ffn: int = 128
    vocab: int = 256
    context: int = 256
    rope_base: float = 10000.0
    eps: float = 1e-5
    qkv_bias: bool = False
    tied: bool = True
    matrices: str = "Q4_1"     # block format of the layers' matrices (and an untied head)
    vectors: str = "F32"       # norms' and biases' type (F32 or F16)
    seed: int = 0
    extra: tuple = ()          # more metadata: (key, value) pairs (a str, else a uint32)


SHAPES = {
    # (a) llama, multi-head attention, no biases, tied head, Q4_1 matrices, head width 16
    "mha": Shape(name="tiny-llama-mha", seed=1),
    # (b) Mistral-like llama file: grouped-query attention (8 heads over 2), untied Q8_0 head,
    #     head width 32 (sqrt not a power of two: the score multiplier), its own RoPE base
    "gqa": Shape(name="tiny-mistral-gqa", hidden=256, heads=8, kv_heads=2, ffn=192, vocab=512, tied=False,
                 matrices="Q8_0", rope_base=1e6, seed=2),
    # (c) qwen2: Q/K/V biases, grouped-query attention (4 heads over 2), NEOX RoPE order, F16 norms and biases
    "qwen2": Shape(arch="qwen2", name="tiny-qwen2-bias", heads=4, kv_heads=2, qkv_bias=True, eps=1e-6, seed=3,
                   vectors="F16"),
}


def write_gguf(path, shape: Shape = Shape()) -> Path:
    """Write a random-weight GGUF file of `shape` at `path`; returns the path."""
    import gguf

    path = Path(path)
    rng = np.random.default_rng(shape.seed)
    q8, fmt = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType[shape.matrices]
    H, D = shape.hidden, shape.hidden // shape.heads
    w = gguf.GGUFWriter(str(path), shape.arch)
    w.add_name(shape.name)
    w.add_block_count(shape.layers)
    w.add_context_length(shape.context)
    w.add_embedding_length(H)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_freq_base(shape.rope_base)
    w.add_rope_dimension_count(D)
    w.add_layer_norm_rms_eps(shape.eps)
    w.add_vocab_size(shape.vocab)
    for key, value in shape.extra:
        (w.add_string if isinstance(value, str) else w.add_uint32)(key, value)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1 if shape.matrices == "Q4_1" else gguf.LlamaFileType.MOSTLY_Q8_0)

    def matrix(name, rows, cols, kind=fmt, scale=None):
        x = rng.normal(0.0, scale or 1.0 / np.sqrt(cols), size=(rows, cols)).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(x, kind), raw_dtype=kind)

    def vector(name, n, mean=0.0, std=0.1):
        w.add_tensor(name, (mean + rng.normal(0.0, std, size=n)).astype(np.float16 if shape.vectors == "F16"
                                                                         else np.float32))

    matrix("token_embd.weight", shape.vocab, H, q8, scale=0.3)
    for i in range(shape.layers):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", H, 1.0)
        matrix(p + "attn_q.weight", shape.heads * D, H)
        matrix(p + "attn_k.weight", shape.kv_heads * D, H)
        matrix(p + "attn_v.weight", shape.kv_heads * D, H)
        if shape.qkv_bias:
            vector(p + "attn_q.bias", shape.heads * D, std=0.5)
            vector(p + "attn_k.bias", shape.kv_heads * D, std=0.5)
            vector(p + "attn_v.bias", shape.kv_heads * D, std=0.5)
        matrix(p + "attn_output.weight", H, shape.heads * D)
        vector(p + "ffn_norm.weight", H, 1.0)
        matrix(p + "ffn_gate.weight", shape.ffn, H)
        matrix(p + "ffn_up.weight", shape.ffn, H)
        matrix(p + "ffn_down.weight", H, shape.ffn)
    vector("output_norm.weight", H, 1.0)
    if not shape.tied:
        matrix("output.weight", shape.vocab, H, fmt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
