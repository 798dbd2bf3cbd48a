"""A job's output tensor and the roots a node signs, without a trace.

A node answers from the fast engine and commits only to its output
(ARCHITECTURE §3): the output root is the root of the program's last tensor,
which these helpers rebuild from the engine's answer.

- all-minilm-l6-v2: the L2-normalised embedding, one row [1, 384].
- smollm2-135m-instruct: the GEN row [1, M + 1] of the decoder program
  (docs/ops.md, "Decoder ops"): the generated token ids, PAD (-1) after the
  last one up to M = max_tokens, then a done flag: 1 when generation ended
  on a stop sequence (finish reason "stop"), 0 when it ran to max_tokens.
"""

from __future__ import annotations

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.tensor import TensorTree

PAD = -1


def embedding_output(vector) -> np.ndarray:
    return np.asarray(vector, dtype=np.int64).reshape(1, -1)


def generation_output(ids, finish_reason: str, max_tokens: int) -> np.ndarray:
    ids = [int(t) for t in ids]
    if not 1 <= len(ids) <= max_tokens or finish_reason not in ("stop", "length"):
        raise CommitmentError("a generation holds 1 to max_tokens ids and ends with 'stop' or 'length'")
    row = ids + [PAD] * (max_tokens - len(ids)) + [1 if finish_reason == "stop" else 0]
    return np.asarray(row, dtype=np.int64).reshape(1, -1)


def parse_generation(row) -> tuple[list[int], str]:
    """(ids, finish_reason) from a GEN row."""
    row = [int(v) for v in np.asarray(row).reshape(-1)]
    ids = [t for t in row[:-1] if t != PAD]
    return ids, "stop" if row[-1] else "length"


def tensor_root(tensor: np.ndarray) -> bytes:
    return TensorTree.build(tensor).root


def input_root(job: JobInput) -> bytes:
    return TensorTree.build(job.tensor()).root
