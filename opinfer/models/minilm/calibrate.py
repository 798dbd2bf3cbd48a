"""Model-build helpers shared by the integer programs: activation ranges from
calibration records and per-row weight quantisation. Build time only: floats
here decide the program's constants, never an inference result."""

from __future__ import annotations

import numpy as np

from opinfer.semantics.quant import quantize_symmetric


def absmax(records: list[dict], key: str) -> float:
    """Largest |value| of one activation over all calibration runs."""
    return max(float(np.abs(r[key]).max()) for r in records)


def channel_absmax(records: list[dict], key: str, headroom: float) -> np.ndarray:
    """Per last-axis channel |max| times `headroom` (normalisation outputs have
    outlier channels that one scale per tensor would crush)."""
    per_run = [np.abs(r[key]).reshape(-1, r[key].shape[-1]).max(0) for r in records]
    return headroom * np.maximum(np.max(per_run, axis=0), 1e-6)


def quantize_rows(w: np.ndarray, s_in) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights [out, in] per output row, after folding the input's
    (per-channel or scalar) scale into the columns; returns (values, row scales)."""
    w = w.astype(np.float64) * np.broadcast_to(np.asarray(s_in, dtype=np.float64), (w.shape[1],))[None, :]
    s_w = np.maximum(np.abs(w).max(1), 1e-30) / 127.0
    return quantize_symmetric(w, s_w[:, None], -127, 127), s_w


def quantize_rows_bits(w: np.ndarray, s_in, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed `bits`-bit weights [out, in] per output row (|w| <= 2^(bits-1) - 1)
    after folding the input's (per-channel or scalar) scale into the columns;
    returns (values, row scales). Model build time only."""
    w = np.asarray(w, dtype=np.float64) * np.broadcast_to(np.asarray(s_in, dtype=np.float64), (w.shape[1],))[None, :]
    top = (1 << (bits - 1)) - 1
    s_w = np.maximum(np.abs(w).max(1), 1e-30) / top
    return quantize_symmetric(w, s_w[:, None], -top, top), s_w
