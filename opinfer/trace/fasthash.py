"""The trace's commitments in native code (opinfer/native/oi_trace.c), in batches.

The same roots as opinfer.semantics.tensor / merkle (tests/unit/test_native_keccak.py),
computed eight hashes at a time and over the CPUs: a long job's trace hashes billions of
activation words (docs/protocol.md, "Trace building time"). Each function takes numpy
arrays and returns digests as a uint8 array [n, 32]; `as_bytes` turns them into the
bytes the Python commitments use.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from opinfer.semantics import merkle

_pool: ThreadPoolExecutor | None = None


def _lib():
    from opinfer import native

    return native.lib()


def threads() -> int:
    """Threads the hashing splits over: $OPINFER_THREADS, else the CPUs this process may use."""
    env = os.environ.get("OPINFER_THREADS")
    return max(1, int(env) if env else len(os.sched_getaffinity(0)))


def pool() -> ThreadPoolExecutor:
    """The hashing threads (ctypes releases the GIL during each native call)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=min(threads(), 16), thread_name_prefix="opinfer-hash")
    return _pool


def _map(fn, parts: list) -> list:
    """fn over parts on the pool (never from one of its own threads: it would wait on itself)."""
    if len(parts) <= 1:
        return [fn(p) for p in parts]
    return list(pool().map(fn, parts))


def set_simd(level: int) -> int:
    """1: eight hashes at a time where the CPU has AVX-512 (the default); 0: one at a time (same bits)."""
    return int(_lib().oi_keccak_set_simd(int(level)))


def keccak_many(data: bytes, n: int, length: int) -> np.ndarray:
    """keccak256 of n messages of `length` bytes each, laid end to end in `data`."""
    if len(data) != n * length:
        raise ValueError("keccak_many: data is not n messages of length bytes")
    out = np.empty((n, 32), dtype=np.uint8)
    buf = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(1, dtype=np.uint8)
    _lib().oi_keccak(buf.ctypes.data, n, length, out.ctypes.data)
    return out


def tensor_roots(values: np.ndarray, cols=None, split: bool = True) -> np.ndarray:
    """Roots of the tensors values[t] ([n, R, C] int64; a [R, C] array is one tensor), tensor t
    cut to its first cols[t] columns when `cols` is given (ragged rows, e.g. the attention
    scores of consecutive positions stored in one array): TensorTree.build(...).root each.
    split: over the hashing threads (False: on this thread, e.g. from one of them)."""
    v = np.asarray(values, dtype=np.int64)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[0] == 0 or v.shape[1] == 0 or v.shape[2] == 0:
        raise ValueError(f"tensor_roots: expected [n, R, C] with n, R, C >= 1, got {v.shape}")
    if v.strides[2] != 8:
        v = np.ascontiguousarray(v)
    n, rows, width = v.shape
    c = np.full(n, width, dtype=np.int64) if cols is None else np.ascontiguousarray(cols, dtype=np.int64)
    if c.shape != (n,) or c.min() < 1 or c.max() > width:
        raise ValueError("tensor_roots: cols must be n widths in [1, C]")
    out = np.empty((n, 32), dtype=np.uint8)
    per_word = 8
    parts = np.array_split(np.arange(n), min(threads(), n)) if n > 1 and split else [np.arange(n)]

    def run(idx):
        if len(idx):
            a, b = int(idx[0]), int(idx[-1]) + 1
            rc = _lib().oi_tensor_roots(v.ctypes.data + a * v.strides[0], b - a, rows, c[a:b].ctypes.data,
                                        v.strides[0] // per_word, v.strides[1] // per_word, out[a:b].ctypes.data)
            if rc != 0:
                raise ValueError("tensor_roots: the native hash refused its input")

    _map(run, parts)
    return out


def tensor_root(values: np.ndarray) -> bytes:
    return bytes(tensor_roots(values)[0])


@lru_cache(maxsize=8)
def pads(pad: bytes) -> np.ndarray:
    """[64, 32]: the subtree of 2^k pad leaves at level k (the padding of a tree over `pad`)."""
    out = [pad]
    for _ in range(63):
        out.append(merkle.keccak(out[-1] + out[-1]))
    return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(64, 32)


def merkle_levels(leaves: np.ndarray, pad: bytes = merkle.ZERO32) -> list[np.ndarray]:
    """All levels (leaves first, root last) of the tree over `leaves` ([n, 32] uint8) whose
    missing nodes are pad subtrees: level k holds ceil(n / 2^k) nodes (merkle.levels
    would pad each level to a power of two; those nodes are pads(pad)[k])."""
    leaves = np.ascontiguousarray(leaves, dtype=np.uint8)
    n = leaves.shape[0]
    if n == 0:
        raise ValueError("a Merkle tree needs at least one leaf")
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    flat = np.empty((sum(sizes), 32), dtype=np.uint8)
    p = pads(pad)
    written = _lib().oi_merkle_levels(leaves.ctypes.data, n, p.ctypes.data, flat.ctypes.data)
    if written != flat.shape[0]:
        raise ValueError("merkle_levels: the native tree has an unexpected size")
    out, at = [], 0
    for s in sizes:
        out.append(flat[at:at + s])
        at += s
    return out


def prefix_root(levels: list[np.ndarray], m: int, pad: bytes = merkle.ZERO32, tail: bytes | None = None) -> bytes:
    """Root of the first m leaves of the tree `levels` (merkle_levels), padded to 2^ceil_log2(m)
    leaves: nodes left of leaf m-1's path are the full tree's, nodes right of it pad subtrees.
    `tail` replaces leaf m-1 (an open chunk, say)."""
    p = pads(pad)
    cur, idx = (tail if tail is not None else bytes(levels[0][m - 1])), m - 1
    for k in range(merkle.ceil_log2(m)):
        cur = merkle.keccak(cur + bytes(p[k])) if idx % 2 == 0 else merkle.keccak(bytes(levels[k][idx - 1]) + cur)
        idx >>= 1
    return cur


def prefix_roots(levels: list[np.ndarray], ms, pad: bytes = merkle.ZERO32) -> np.ndarray:
    """prefix_root for each m of ms, as [len(ms), 32] (natively, all at once)."""
    flat = np.ascontiguousarray(np.concatenate(levels))
    offsets = np.cumsum([0] + [len(level) for level in levels[:-1]]).astype(np.int64)
    ms = np.ascontiguousarray(ms, dtype=np.int64)
    out = np.empty((len(ms), 32), dtype=np.uint8)
    if len(ms) and (ms.min() < 1 or ms.max() > len(levels[0])):
        raise ValueError("prefix_roots: prefix lengths beyond the tree")
    p = pads(pad)
    if len(ms) and _lib().oi_prefix_roots(flat.ctypes.data, offsets.ctypes.data, len(levels), p.ctypes.data,
                                          ms.ctypes.data, len(ms), out.ctypes.data) != 0:
        raise ValueError("prefix_roots: the native fold refused its input")
    return out


def vt_roots(vt: np.ndarray, ms) -> np.ndarray:
    """Roots of the V^T cache vt [W, S] cut to its first m columns, for each m of ms."""
    v = np.ascontiguousarray(vt, dtype=np.int64)
    ms = np.ascontiguousarray(ms, dtype=np.int64)
    out = np.empty((len(ms), 32), dtype=np.uint8)
    if not len(ms):
        return out
    if ms.min() < 1 or ms.max() > v.shape[1]:
        raise ValueError("vt_roots: column counts beyond the cache")
    rc = _lib().oi_vt_roots(v.ctypes.data, v.shape[0], int(ms.max()), v.shape[1], ms.ctypes.data, len(ms),
                            out.ctypes.data)
    if rc != 0:
        raise ValueError("vt_roots: the native hash refused its input")
    return out


def as_bytes(digests: np.ndarray) -> list[bytes]:
    return [bytes(d) for d in digests]
