"""The native integer kernels (oi_kernels.c), built with gcc and loaded with ctypes.

`make deps` builds the library (`python -m opinfer.native build`); a
checkout whose library is missing or older than its source rebuilds it on first
use (gcc is a build requirement, like cmake and cargo on these machines). The
build uses no -march flag: the AVX2 kernels carry their own target attribute
and are picked at run time when the CPU has AVX2, else a scalar path (the same
bits). Why C and ctypes rather than numba or a CPython extension: docs/quantisation.md.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "oi_kernels.c"
SOURCES = (SOURCE, HERE / "oi_trace.c")     # the kernels; the trace's (keccak in batches, the chunked softmax)
LIBRARY = HERE / "_oi_kernels.so"
CFLAGS = ["-O2", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]
ENV_THREADS = "OPINFER_THREADS"

_lock = threading.Lock()
_lib = None

I64 = ctypes.c_int64
P = ctypes.c_void_p


class NativeError(RuntimeError):
    """The native kernels could not be built or loaded."""


def build(force: bool = False) -> Path:
    """Compile oi_kernels.c into _oi_kernels.so next to it (atomically: a temporary file renamed)."""
    if not force and LIBRARY.exists() and LIBRARY.stat().st_mtime >= max(s.stat().st_mtime for s in SOURCES):
        return LIBRARY
    cc = os.environ.get("CC", "gcc")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=HERE)
    os.close(fd)
    try:
        out = subprocess.run([cc, *CFLAGS, *map(str, SOURCES), "-o", tmp], capture_output=True, text=True)
        if out.returncode != 0:
            raise NativeError(f"{cc} failed to build {LIBRARY.name}:\n{out.stderr}")
        os.replace(tmp, LIBRARY)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return LIBRARY


class QMat(ctypes.Structure):
    _fields_ = [("fmt", I64), ("n", I64), ("k", I64), ("mult", I64), ("data", P), ("shift", P), ("lo", P),
                ("hi", P)]


class Model(ctypes.Structure):
    _fields_ = [(name, I64) for name in (
        "n_layers", "hidden", "n_heads", "n_kv", "head_dim", "ffn", "vocab", "rope_rows", "eps", "norm_lo",
        "norm_hi", "score_mult", "score_shift", "prob_one", "ctx_mult", "ctx_shift", "ctx_lo", "ctx_hi",
        "embed_shift", "res_lo", "res_hi", "silu_off", "silu_len")] + [
        (name, P) for name in ("attn_gain", "ffn_gain", "out_gain", "qkv", "o", "gate_up", "down", "head", "silu",
                               "cos", "sin", "embed", "qkv_bias")]


class Seq(ctypes.Structure):
    _fields_ = [("k", P), ("v", P), ("cap", I64), ("pos", I64)]


# MiniLM (opinfer/models/minilm/engine.py): int8 matrices packed in panels of 16 rows, LayerNorms, layers.
class I8Mat(ctypes.Structure):
    _fields_ = [(name, I64) for name in ("n", "k", "np", "kp", "planes", "shift", "lo", "hi")] + [
        (name, P) for name in ("wp", "colsum", "bias", "mult")]


class Ln(ctypes.Structure):
    _fields_ = [("gain", P), ("beta", P), ("eps", I64)]


class MlmLayer(ctypes.Structure):
    _fields_ = [(name, I8Mat) for name in ("q", "k", "v", "o", "up", "down")] + [("ln1", Ln), ("ln2", Ln)] + [
        (name, I64) for name in ("score_mult", "score_shift", "ctx_mult", "ctx_shift", "x_shift", "h_shift",
                                 "gelu_half")] + [(name, P) for name in ("x_mult", "h_mult", "gelu")]


class Mlm(ctypes.Structure):
    _fields_ = [(name, I64) for name in ("n_layers", "hidden", "heads", "ffn", "vocab", "positions", "prob_one")] + [
        (name, P) for name in ("word", "pos", "typ")] + [("ln0", Ln), ("layers", P)]


def lib():
    """The loaded library (built first if needed), with its thread count from
    $OPINFER_THREADS (default: the CPUs this process may use, at most 8)."""
    global _lib
    with _lock:
        if _lib is None:
            build()
            try:
                handle = ctypes.CDLL(str(LIBRARY))
            except OSError as exc:
                raise NativeError(f"cannot load {LIBRARY}: {exc}") from None
            handle.oi_set_threads.argtypes = [ctypes.c_int]
            handle.oi_set_threads.restype = ctypes.c_int
            handle.oi_get_threads.restype = ctypes.c_int
            handle.oi_set_simd.argtypes = [ctypes.c_int]
            handle.oi_set_simd.restype = ctypes.c_int
            handle.oi_dense.argtypes = [ctypes.POINTER(QMat), P, I64, P]
            handle.oi_dense_acc.argtypes = [ctypes.POINTER(QMat), P, I64, P, P, P, P]
            handle.oi_rms_norm.argtypes = [P, I64, I64, P, I64, I64, I64, P]
            handle.oi_exp_neg.argtypes = [I64]
            handle.oi_exp_neg.restype = I64
            handle.oi_exp_neg_tab.argtypes = [I64]
            handle.oi_exp_neg_tab.restype = I64
            handle.oi_forward.argtypes = [ctypes.POINTER(Model), I64, ctypes.POINTER(Seq), P, P, I64, P]
            handle.oi_forward.restype = ctypes.c_int
            handle.oi_i8_dense.argtypes = [ctypes.POINTER(I8Mat), P, I64, P]
            handle.oi_i8_dense.restype = ctypes.c_int
            handle.oi_mlm_layer_norm.argtypes = [ctypes.POINTER(Ln), P, I64, I64, P]
            handle.oi_mlm_attention.argtypes = [P, P, P, I64, I64, I64, I64, I64, I64, I64, I64, P]
            handle.oi_mlm_attention.restype = ctypes.c_int
            handle.oi_sample_rows.argtypes = [I64, P, I64, P, P, P, P, P]
            handle.oi_sample_rows.restype = ctypes.c_int
            handle.oi_sample_pick_rows.argtypes = [I64, P, I64, P, P, P]
            handle.oi_sample_pick_rows.restype = ctypes.c_int
            handle.oi_mlm_forward.argtypes = [ctypes.POINTER(Mlm), I64, P, P, P]
            handle.oi_mlm_forward.restype = ctypes.c_int
            handle.oi_keccak_set_simd.argtypes = [ctypes.c_int]
            handle.oi_keccak_set_simd.restype = ctypes.c_int
            handle.oi_keccak.argtypes = [P, I64, I64, P]
            handle.oi_tensor_roots.argtypes = [P, I64, I64, P, I64, I64, P]
            handle.oi_tensor_roots.restype = ctypes.c_int
            handle.oi_merkle_levels.argtypes = [P, I64, P, P]
            handle.oi_merkle_levels.restype = I64
            handle.oi_vt_roots.argtypes = [P, I64, I64, I64, P, I64, P]
            handle.oi_vt_roots.restype = ctypes.c_int
            handle.oi_softmax_chunks.argtypes = [P, I64, I64, P, I64, I64, I64, P, I64, I64, I64, P, P]
            handle.oi_softmax_chunks.restype = ctypes.c_int
            handle.oi_prefix_roots.argtypes = [P, P, I64, P, P, I64, P]
            handle.oi_prefix_roots.restype = ctypes.c_int
            threads = os.environ.get(ENV_THREADS)
            handle.oi_set_threads(int(threads) if threads else min(len(os.sched_getaffinity(0)), 8))
            _lib = handle
    return _lib


def set_threads(n: int) -> int:
    """Threads the kernels split output rows over (results are the same for any count)."""
    return lib().oi_set_threads(int(n))


SIMD_DEFAULT = 3


def set_simd(level: int = SIMD_DEFAULT) -> int:
    """Which kernels run: 0 scalar, 1 AVX2, 2 AVX2 with AVX-VNNI, 3 and AVX-512 VNNI (16-row
    Q4_1 products; the default), each only where the CPU has it (the same bits on every path);
    returns the level in use."""
    return int(lib().oi_set_simd(int(level)))


def ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["build"]:
        path = build(force="--force" in args)
        print(f"built {path}")
        return 0
    print("usage: python -m opinfer.native build [--force]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
