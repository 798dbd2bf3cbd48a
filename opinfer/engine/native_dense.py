"""Block matrices for the native kernels (opinfer/native): the fast
path of DENSE_BLOCK, bit for bit blocks.block_dense (tests/unit/test_blocks.py)."""

from __future__ import annotations

import numpy as np

from opinfer.semantics.blocks import BLOCK, Q4_1, QMatrix, block_dense, pack, unpack


class NativeDense:
    """Packed blocks with their requantisation (per-column shift and clamp, one
    multiplier) for the native kernels; `__call__` is block_dense."""

    def __init__(self, packed: np.ndarray, fmt: int, mult: int, shift, lo, hi):
        from opinfer import native

        n, nb = packed.shape
        self.packed, self.fmt, self.mult = np.ascontiguousarray(packed), fmt, int(mult)
        col = lambda v: np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=np.int64), (n,)))  # noqa: E731
        self.shift, self.lo, self.hi = col(shift), col(lo), col(hi)
        self.shape = (n, nb * BLOCK)
        self.struct = native.QMat(fmt, n, nb * BLOCK, self.mult, self.packed.ctypes.data, self.shift.ctypes.data,
                                  self.lo.ctypes.data, self.hi.ctypes.data)

    @classmethod
    def of(cls, w: QMatrix, mult: int, shift, lo, hi) -> "NativeDense":
        return cls(pack(w), w.fmt, mult, shift, lo, hi)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from opinfer import native

        x = np.ascontiguousarray(x, dtype=np.int64)
        out = np.empty((x.shape[0], self.shape[0]), dtype=np.int64)
        native.lib().oi_dense(self.struct, x.ctypes.data, x.shape[0], out.ctypes.data)
        return out

    def reference(self, x: np.ndarray) -> np.ndarray:
        return block_dense(x, unpack(self.packed, self.fmt), self.mult, self.shift, self.lo, self.hi)

    def acc(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(acc, xq, a, d) as the native kernels compute them."""
        from opinfer import native

        x = np.ascontiguousarray(x, dtype=np.int64)
        t, (n, k) = x.shape[0], self.shape
        acc = np.empty((t, n), dtype=np.int64)
        xq = np.empty((t, k), dtype=np.int8)
        a = np.empty((t, k // BLOCK), dtype=np.int32)
        d = np.empty(t, dtype=np.int32)
        native.lib().oi_dense_acc(self.struct, x.ctypes.data, t, acc.ctypes.data, xq.ctypes.data, a.ctypes.data,
                                  d.ctypes.data)
        return acc, xq, a, d


def program_kernel(fmt, codes, dscale, mscale, mult, shift, lo, hi):
    """The program's DENSE_BLOCK on the native kernels (semantics/decoder_ops.py's
    dense_kernel); None where they cannot be loaded or the matrix is outside
    their bounds, and the numpy rule runs."""
    try:
        small = codes.astype(np.uint8 if fmt == Q4_1 else np.int8)
        return NativeDense.of(QMatrix(fmt, small, dscale, mscale), mult, shift, lo, hi)
    except Exception:       # noqa: BLE001 -- no compiler or library, or bounds: the numpy rule
        return None


def _register() -> None:
    from opinfer.semantics import decoder_ops

    decoder_ops.dense_kernel = program_kernel


_register()
