"""A llama-family GGUF file: its hyperparameters from the metadata, its tensors where they lie.

What is read (`Config.of`): `general.architecture` (llama, whose files also
carry Mistral's models, or qwen2) and the architecture's own keys:
`<arch>.block_count`, `.embedding_length`, `.feed_forward_length`,
`.attention.head_count`, `.attention.head_count_kv` (any ratio: grouped-query
attention), `.attention.layer_norm_rms_epsilon`, `.rope.freq_base`,
`.context_length` and `.vocab_size` (else the token embeddings' rows). From
the tensors: whether blocks carry Q/K/V biases (`blk.N.attn_q.bias`, qwen2)
and whether the LM head is its own `output.weight` or the token embeddings
(tied). Everything else a decoder could need is refused with an error that
names it: another architecture, mixture of experts, RoPE scaling, partial
RoPE, a sliding window, key/value widths other than embedding/heads, tensor
types the integer rules do not take (matrices must be Q4_1 or Q8_0 blocks,
the token embeddings Q8_0; norms and biases F32 or F16).

`read_index` reads the header without gguf.GGUFReader: scalar and string
metadata (arrays, such as a tokenizer's 100,000 strings, are skipped) and
where each tensor lies, so an engine's build reads only this and each
tensor's bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from opinfer.errors import OpinferError

#: general.architecture -> RoPE pairing. llama.cpp's converter permutes a llama
#: file's Q/K rows so that RoPE rotates adjacent pairs ("normal"); qwen2 keeps
#: Hugging Face's order and rotates (i, i + D/2) ("neox").
ARCHITECTURES = {"llama": "normal", "qwen2": "neox"}


MAX_WIDTH = 2048        # widest hidden row: 2,048 squares of 26-bit values stay below 2^63


class ModelFileError(OpinferError):
    """The GGUF file is missing, or holds a model this library does not run."""


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_BLOCKS = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}   # id: (name, elements, bytes)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str
    shape: tuple[int, ...]     # ggml order: shape[0] is the contiguous (input) dimension
    offset: int                # from the start of the file
    n_bytes: int


def read_index(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """The GGUF header: scalar and string metadata, and where each tensor lies."""
    with open(path, "rb") as f:
        def unpack(fmt):
            size = struct.calcsize(fmt)
            return struct.unpack(fmt, f.read(size))[0]

        def string():
            return f.read(unpack("<Q")).decode("utf-8", "replace")

        def skip(vtype):
            if vtype == 8:
                f.seek(unpack("<Q"), 1)
            elif vtype == 9:
                inner, n = unpack("<I"), unpack("<Q")
                if inner in _SCALAR:
                    f.seek(n * struct.calcsize(_SCALAR[inner]), 1)
                else:
                    for _ in range(n):
                        skip(inner)
            else:
                f.seek(struct.calcsize(_SCALAR[vtype]), 1)

        if f.read(4) != b"GGUF":
            raise ModelFileError(f"{path}: not a GGUF file")
        version = unpack("<I")
        if version < 2:
            raise ModelFileError(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = unpack("<Q"), unpack("<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key, vtype = string(), unpack("<I")
            if vtype in _SCALAR:
                meta[key] = unpack(_SCALAR[vtype])
            elif vtype == 8:
                meta[key] = string()
            else:
                skip(vtype)
        infos = []
        for _ in range(n_tensors):
            name = string()
            dims = tuple(unpack("<Q") for _ in range(unpack("<I")))
            ttype, offset = unpack("<I"), unpack("<Q")
            infos.append((name, dims, ttype, offset))
        align = int(meta.get("general.alignment", 32))
        start = -(-f.tell() // align) * align
    tensors = {}
    for name, dims, ttype, offset in infos:
        if ttype not in _BLOCKS:
            raise ModelFileError(f"{name}: tensor type {ttype} is not supported (Q4_1, Q8_0, F16, F32)")
        type_name, per, size = _BLOCKS[ttype]
        count = int(np.prod(dims))
        tensors[name] = TensorInfo(name, type_name, dims, start + offset, count // per * size)
    return meta, tensors


@dataclass(frozen=True)
class Config:
    """A llama-family decoder's hyperparameters, as its GGUF file states them."""

    arch: str
    name: str                  # general.name ("" when absent)
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    context_length: int
    rope_theta: float
    rms_eps: float
    rope: str                  # "normal" (adjacent pairs) or "neox" (i, i + D/2)
    qkv_bias: bool
    tied: bool                 # no output.weight: the LM head is the token embeddings

    @classmethod
    def of(cls, meta: dict[str, Any], tensors: dict[str, TensorInfo], path: str = "") -> "Config":
        where = f"{path}: " if path else ""
        arch = meta.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ModelFileError(f"{where}architecture {arch!r} is not a llama-family decoder this library runs "
                                 f"({', '.join(sorted(ARCHITECTURES))})")

        def key(name, default=None):
            value = meta.get(f"{arch}.{name}", default)
            if value is None:
                raise ModelFileError(f"{where}metadata key {arch}.{name} is missing")
            return value

        hidden, n_heads = int(key("embedding_length")), int(key("attention.head_count"))
        n_kv = int(key("attention.head_count_kv", n_heads))
        if n_heads < 1 or n_kv < 1 or n_heads % n_kv or hidden % n_heads:
            raise ModelFileError(f"{where}{n_heads} heads over {n_kv} KV heads and width {hidden}: heads must "
                                 f"divide the width and KV heads the heads")
        if hidden > MAX_WIDTH:
            # RMS_NORM sums `hidden` squares of up to 2 x SQUARE_BITS bits in int64 (numpy and
            # the native kernels); above 2,048 of them the engine's sum could wrap where the
            # verifier's int256 does not, and the bits would disagree.
            raise ModelFileError(f"{where}width {hidden}: at most {MAX_WIDTH} (the RMS norm's int64 sum)")
        head_dim = hidden // n_heads
        for name in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
            if int(meta.get(f"{arch}.{name}", head_dim)) != head_dim:
                raise ModelFileError(f"{where}{arch}.{name} = {meta[f'{arch}.{name}']} is not the head width "
                                     f"{head_dim} (not supported)")
        if int(meta.get(f"{arch}.expert_count", 0)):
            raise ModelFileError(f"{where}a mixture of experts ({arch}.expert_count) is not supported")
        scaling = meta.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", "") or "rope_freqs.weight" in tensors:
            raise ModelFileError(f"{where}RoPE scaling ({scaling if scaling != 'none' else 'rope_freqs.weight'}) "
                                 "is not supported")
        if f"{arch}.attention.sliding_window" in meta:
            raise ModelFileError(f"{where}sliding-window attention is not supported")
        if head_dim % 2 or head_dim > 256:
            raise ModelFileError(f"{where}head width {head_dim}: even and at most 256")
        if "token_embd.weight" not in tensors:
            raise ModelFileError(f"{where}no token_embd.weight")
        vocab = int(meta.get(f"{arch}.vocab_size", tensors["token_embd.weight"].shape[1]))
        bias = [f"blk.0.attn_{x}.bias" in tensors for x in "qkv"]
        if any(bias) and not all(bias):
            raise ModelFileError(f"{where}Q, K and V biases come together or not at all")
        if "blk.0.attn_output.bias" in tensors or "blk.0.ffn_down.bias" in tensors:
            raise ModelFileError(f"{where}biases other than Q/K/V are not supported")
        return cls(arch=arch, name=str(meta.get("general.name", "")), n_layers=int(key("block_count")), hidden=hidden,
                   n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, ffn=int(key("feed_forward_length")),
                   vocab=vocab, context_length=int(key("context_length", 2048)),
                   rope_theta=float(key("rope.freq_base", 10000.0)),
                   rms_eps=float(key("attention.layer_norm_rms_epsilon")), rope=ARCHITECTURES[arch],
                   qkv_bias=all(bias), tied="output.weight" not in tensors)


def read_config(path: str | os.PathLike) -> Config:
    """The file's Config (reads only its header)."""
    meta, tensors = read_index(path)
    return Config.of(meta, tensors, str(path))
