"""The GGUF file's own quantised blocks as exact integers, and the block dot product.

GGUF stores SmolLM2's matrices as Q4_1 blocks of 32 weights (an fp16 scale d,
an fp16 minimum m, 32 four-bit codes q: w = d q + m) and its token embeddings
(also the tied LM head) as Q8_0 blocks (an fp16 scale d, 32 signed 8-bit codes:
w = d q). Every fp16 number is a dyadic rational, an integer multiple of
2^-24 (the smallest subnormal), so D = d 2^24 and M = m 2^24 are exact integers
and so is every weight: W = D q + M, at 2^-24. No weight is rounded.

Activations enter a block product as blockwise int8, like llama.cpp's Q8_0
for Q4 dot products, in exact integers (`quantize_rows`, docs/quantisation.md):

    d    = max(bit_length(max |x|) - ROW_BITS, 0)       per row (|xs| <= 2^15)
    xs   = (x + 2^(d-1)) >> d                            (xs = x when d = 0)
    a_b  = max |xs| over block b of 32                   the block's scale
    xq   = round_div(ACT_MAX xs, a_b)  in [-127, 127]    (0 when a_b = 0)

and a weight row n's product with them is

    acc_n = sum_b a_b (D_nb S1_nb + M_nb S2_b),  S1 = sum_i q_i xq_i,  S2 = sum_i xq_i

(xq ~ 127 xs / a_b, so acc ~ 127 2^24 (w . xs)); the output is
`requant(acc << d, mult, shift, lo, hi)`. These are elements.block_dense's
rules, vectorised; the native kernels (opinfer/native) compute the same
bits, and tests check all three agree (tests/unit/test_blocks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opinfer.semantics import elements as el

BLOCK = el.BLOCK
FP16_GRID_BITS = 24        # fp16 values are integers at 2^-24
ROW_BITS = el.BLOCK_ROW_BITS  # activation rows are brought to |xs| <= 2^15 before blocking
ACT_MAX = el.BLOCK_ACT_MAX    # blockwise int8 activations in [-127, 127]
# round(2^30 / 127): folds the blocks' 1/127 into a requantisation multiplier
# (mult / 2^shift = 2^(out_bits - 24 - in_bits) / 127 with shift = 24 + in_bits + 30 - out_bits).
MULT_127 = 8454660
MULT_127_BITS = 30
ACC_LIMIT = 1 << 62        # every |partial sum| of an accumulator stays below this (checked per matrix)
Q4_1, Q8_0 = 0, 1
FORMATS = {Q4_1: "Q4_1", Q8_0: "Q8_0"}
# The native kernels' blocks, row by row (`pack`).
Q4_1_PACKED = np.dtype([("D", "<i4"), ("M", "<i4"), ("qs", "u1", (16,))])          # 24 bytes
Q8_0_PACKED = np.dtype([("D", "<i4"), ("qs", "i1", (32,))])                       # 36 bytes


def fp16_to_grid(bits: np.ndarray) -> np.ndarray:
    """fp16 bit patterns -> the exact value times 2^24, as int64 (NaN and inf refused)."""
    bits = np.asarray(bits, dtype=np.uint16).astype(np.int64)
    exp, frac, neg = (bits >> 10) & 31, bits & 1023, bits >> 15
    if np.any(exp == 31):
        raise ValueError("fp16 inf or NaN in a block scale")
    # normal: (1024 + f) 2^(e - 25) = (1024 + f) 2^(e - 1) at 2^-24; subnormal: f 2^-24
    mag = np.where(exp > 0, (1024 + frac) << np.maximum(exp - 1, 0), frac)
    return np.where(neg == 1, -mag, mag)


@dataclass
class QMatrix:
    """A [N, K] matrix of blocks: codes (Q4_1: 0..15, Q8_0: -128..127) as
    int8/uint8 [N, K], D and M (zeros for Q8_0) as int64 [N, K / 32] at 2^-24."""

    fmt: int
    codes: np.ndarray
    D: np.ndarray
    M: np.ndarray
    checked: bool = False       # True: the bounds are known to hold (unpacked from a checked matrix)

    def __post_init__(self):
        n, k = self.codes.shape
        if k % BLOCK or self.D.shape != (n, k // BLOCK) or self.M.shape != self.D.shape:
            raise ValueError("a block matrix needs K a multiple of 32 and one (D, M) per block")
        if not self.checked:
            self.check_bounds()

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def weights(self) -> np.ndarray:
        """The exact integer weights D q + M at 2^-24, int64 [N, K]."""
        n, k = self.shape
        q = self.codes.astype(np.int64).reshape(n, k // BLOCK, BLOCK)
        return (q * self.D[..., None] + self.M[..., None]).reshape(n, k)

    def dequantize(self) -> np.ndarray:
        return self.weights().astype(np.float64) / (1 << FP16_GRID_BITS)

    def check_bounds(self) -> None:
        """Every scale fits int32 and every accumulator's partial sums stay below
        2^62: |a_b (D S1 + M S2)| = a_b |sum_i W_i xq_i| <= 2^15 127 sum_i |W_i|
        for block b, so any partial sum over blocks is at most
        2^15 127 sum_i |W_ni| (checked for the worst row)."""
        if self.D.size and max(int(np.abs(self.D).max()), int(np.abs(self.M).max())) >= 1 << 31:
            raise ValueError("a block scale does not fit int32 at 2^-24")
        if self.codes.size:
            n, k = self.shape
            worst = 0
            for i in range(0, n, 1024):      # sum_i |D q_i + M| per row, in bounded chunks
                q = self.codes[i:i + 1024].astype(np.int64).reshape(-1, k // BLOCK, BLOCK)
                w = np.abs(q * self.D[i:i + 1024, :, None] + self.M[i:i + 1024, :, None])
                worst = max(worst, int(w.sum((1, 2)).max()))
            if worst * (ACT_MAX << ROW_BITS) >= ACC_LIMIT:
                raise ValueError("block products could leave int64")

    def rows(self, index) -> "QMatrix":
        return QMatrix(self.fmt, self.codes[index], self.D[index], self.M[index], checked=True)

    @classmethod
    def concat(cls, mats: list["QMatrix"]) -> "QMatrix":
        """Matrices reading the same input, side by side along N (q|k|v, gate|up)."""
        if len({m.fmt for m in mats}) != 1 or len({m.shape[1] for m in mats}) != 1:
            raise ValueError("concatenated block matrices share format and K")
        return cls(mats[0].fmt, np.concatenate([m.codes for m in mats]), np.concatenate([m.D for m in mats]),
                   np.concatenate([m.M for m in mats]))


def from_gguf(raw: np.ndarray, type_name: str, n: int, k: int) -> QMatrix:
    """A GGUF tensor's raw bytes (gguf.GGUFReader's tensor.data) as a QMatrix [n, k]."""
    return unpack(*pack_gguf(raw, type_name, n, k))


def pack_gguf(raw: np.ndarray, type_name: str, n: int, k: int) -> tuple[np.ndarray, int]:
    """(packed blocks, format) of a GGUF tensor's raw bytes: the file's blocks with their fp16
    scales turned into exact int32 on the 2^-24 grid (`pack`'s layout; the nibble order is
    the file's), checked against the accumulator bound chunk by chunk."""
    raw = np.asarray(raw, dtype=np.uint8)
    nb = k // BLOCK
    if type_name == "Q4_1":
        blocks = raw.reshape(n, nb, 20)
        out = np.empty((n, nb), dtype=Q4_1_PACKED)
        out["D"] = fp16_to_grid(blocks[..., 0:2].copy().view(np.uint16)[..., 0])
        out["M"] = fp16_to_grid(blocks[..., 2:4].copy().view(np.uint16)[..., 0])
        out["qs"] = blocks[..., 4:20]
        fmt = Q4_1
    elif type_name == "Q8_0":
        blocks = raw.reshape(n, nb, 34)
        out = np.empty((n, nb), dtype=Q8_0_PACKED)
        out["D"] = fp16_to_grid(blocks[..., 0:2].copy().view(np.uint16)[..., 0])
        out["qs"] = blocks[..., 2:34].view(np.int8)
        fmt = Q8_0
    else:
        raise ValueError(f"block format {type_name} is not supported (Q4_1 and Q8_0 are)")
    # The accumulator bound (QMatrix.check_bounds) with sum_i |D q_i + M| <= |D| sum_i |q_i| + 32 |M|,
    # cheap to take over the packed bytes; a matrix that fails it gets the exact check.
    worst = 0
    for start in range(0, n, 2048):         # bounded temporaries
        part = out[start:start + 2048]
        if fmt == Q4_1:
            qs = part["qs"]
            qsum = (qs & 0x0F).sum(-1, dtype=np.int64) + (qs >> 4).sum(-1, dtype=np.int64)
            bound = np.abs(part["D"].astype(np.int64)) * qsum + BLOCK * np.abs(part["M"].astype(np.int64))
        else:
            bound = np.abs(part["D"].astype(np.int64)) * np.abs(part["qs"].astype(np.int16)).sum(-1, dtype=np.int64)
        worst = max(worst, int(bound.sum(-1).max(initial=0)))
    if worst * (ACT_MAX << ROW_BITS) >= ACC_LIMIT:
        for start in range(0, n, 512):      # bounded temporaries
            unpack(out[start:start + 512], fmt, checked=False)
    return out, fmt


def unpack(packed: np.ndarray, fmt: int, checked: bool = True) -> QMatrix:
    """The QMatrix (codes, D, M) of packed blocks."""
    n, nb = packed.shape
    if fmt == Q4_1:
        qs = packed["qs"]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, nb * BLOCK)
        return QMatrix(Q4_1, codes, packed["D"].astype(np.int64), packed["M"].astype(np.int64), checked)
    d = packed["D"].astype(np.int64)
    return QMatrix(Q8_0, packed["qs"].reshape(n, nb * BLOCK), d, np.zeros_like(d), checked)


# ---------------------------------------------------------------- numpy reference of the rules

def bit_length(x: np.ndarray) -> np.ndarray:
    """Exact bit lengths of non-negative int64 values below 2^53."""
    x = np.asarray(x, dtype=np.int64)
    return np.where(x > 0, np.frexp(x.astype(np.float64))[1], 0).astype(np.int64)


def row_shift(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(xs, d): each row shifted right by d = max(bit_length(max |x|) - ROW_BITS, 0), rounding half up."""
    x = np.asarray(x, dtype=np.int64)
    d = np.maximum(bit_length(np.abs(x).max(-1, keepdims=True)) - ROW_BITS, 0)
    half = np.where(d > 0, np.int64(1) << np.maximum(d - 1, 0), 0)
    return (x + half) >> d, d


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xq [T, K], a [T, K/32], d [T, 1]) of activation rows x [T, K] (module docstring)."""
    xs, d = row_shift(x)
    t, k = xs.shape
    blocks = xs.reshape(t, k // BLOCK, BLOCK)
    a = np.abs(blocks).max(-1)
    den = 2 * np.maximum(a, 1)[..., None]
    xq = np.where(a[..., None] > 0, (2 * ACT_MAX * blocks + den // 2) // den, 0)
    return xq.reshape(t, k), a, d


def block_acc(xq: np.ndarray, a: np.ndarray, w: QMatrix) -> np.ndarray:
    """acc [T, N] = sum_b a_b (D S1 + M S2) of quantised rows (xq, a) and a block matrix."""
    return block_acc_raw(xq, a, w.codes, w.D, w.M)


def block_acc_raw(xq: np.ndarray, a: np.ndarray, codes: np.ndarray, D: np.ndarray, M: np.ndarray) -> np.ndarray:
    """block_acc over the arrays: codes [N, K], D and M [N, K/32]. Exact: each block's S1
    is below 2^24 in magnitude (its float32 product is exact), the sums over blocks are int64."""
    t, k = xq.shape
    n = codes.shape[0]
    nb = k // BLOCK
    xb = xq.reshape(t, nb, BLOCK).transpose(1, 0, 2).astype(np.float32)               # [nb, T, 32]
    acc = np.zeros((t, n), dtype=np.int64)
    s2 = xq.reshape(t, nb, BLOCK).sum(-1)                                             # [T, nb]
    step = max(1, (1 << 22) // max(k, 1))                                             # bounded temporaries
    for start in range(0, n, step):
        rows = slice(start, start + step)
        cb = codes[rows].reshape(-1, nb, BLOCK).transpose(1, 2, 0).astype(np.float32)  # [nb, 32, n']
        s1 = np.matmul(xb, cb).astype(np.int64)                                       # [nb, T, n']
        part = acc[:, rows]
        for b in range(nb):
            part += a[:, b:b + 1] * (s1[b] * D[rows, b] + s2[:, b:b + 1] * M[rows, b])
    return acc


def requant_shifted(acc: np.ndarray, d: np.ndarray, mult, shift, lo, hi) -> np.ndarray:
    """clamp(floor((acc 2^d mult + 2^(shift-1)) / 2^shift), lo, hi) exactly, for |acc| < 2^62,
    0 < mult < 2^24, per-column (or scalar) mult, shift, lo, hi and per-row d.

    With e = shift - d >= 33 the product is split at 2^32 so that no int64 overflows:
    floor((A 2^32 + B + 2^(e-1)) / 2^e) = (A + (B >> 32) + 2^(e-33)) >> (e - 32) for
    acc = A 2^32 + B, 0 <= B < 2^32 (2^(e-1) is a multiple of 2^32). Rows with a smaller e
    fall back to Python integers."""
    acc = np.asarray(acc, dtype=np.int64)
    mult = np.broadcast_to(np.asarray(mult, dtype=np.int64), acc.shape[-1:])
    shift = np.broadcast_to(np.asarray(shift, dtype=np.int64), acc.shape[-1:])
    e = shift[None, :] - np.asarray(d, dtype=np.int64).reshape(-1, 1)
    if np.all(e >= 33):
        hi_part, lo_part = acc >> 32, acc & 0xFFFFFFFF
        y = (hi_part * mult + ((lo_part * mult) >> 32) + (np.int64(1) << (e - 33))) >> (e - 32)
        return np.clip(y, lo, hi)
    out = np.empty(acc.shape, dtype=object)
    lo_b = np.broadcast_to(np.asarray(lo, dtype=np.int64), acc.shape[-1:])
    hi_b = np.broadcast_to(np.asarray(hi, dtype=np.int64), acc.shape[-1:])
    for r in range(acc.shape[0]):
        dr = int(np.asarray(d).reshape(-1)[r])
        for c in range(acc.shape[1]):
            s = int(shift[c])
            v = (int(acc[r, c]) << dr) * int(mult[c])
            v = (v + (1 << (s - 1))) >> s if s > 0 else v
            out[r, c] = min(max(v, int(lo_b[c])), int(hi_b[c]))
    return out.astype(np.int64)


def block_dense(x: np.ndarray, w: QMatrix, mult, shift, lo, hi) -> np.ndarray:
    """elements.block_dense on every element: x [T, K] int64 -> [T, N] int64."""
    xq, a, d = quantize_rows(x)
    return requant_shifted(block_acc(xq, a, w), d, mult, shift, lo, hi)


def dense_shift(in_bits: int, out_bits: int) -> int:
    """The requantisation shift that takes a block product of an input at 2^-in_bits
    to an output at 2^-out_bits (with mult = MULT_127)."""
    return FP16_GRID_BITS + in_bits + MULT_127_BITS - out_bits


# ---------------------------------------------------------------- native layout

def pack(w: QMatrix) -> np.ndarray:
    """The native kernels' blocks, row by row: Q4_1 {int32 D, int32 M, 16 bytes: code j
    in the low nibble of byte j, code j + 16 in its high nibble} (the GGUF nibble order);
    Q8_0 {int32 D, 32 int8 codes}."""
    n, k = w.shape
    nb = k // BLOCK
    if w.fmt == Q4_1:
        out = np.empty((n, nb), dtype=Q4_1_PACKED)
        codes = w.codes.reshape(n, nb, BLOCK).astype(np.uint8)
        out["qs"] = codes[..., :16] | (codes[..., 16:] << 4)
        out["M"] = w.M
    else:
        out = np.empty((n, nb), dtype=Q8_0_PACKED)
        out["qs"] = w.codes.reshape(n, nb, BLOCK)
    out["D"] = w.D
    return out
