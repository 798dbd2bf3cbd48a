"""Built integer programs as files, and the fast engines loaded from them.

A model's on-chain identity is the root of its *built* integer program, and
building it runs a float calibration, which a different BLAS or SIMD `exp`
could change in a last bit (docs/quantisation.md, "Determinism and
reproducibility"). So a network ships the built program: `save_program`
writes it (op descriptors, weight tensors at their packed widths, the root),
`load_program` reads it back and refuses it unless its root is the one
expected, and `minilm_from_program` / the llama family's `model_from_program`
(opinfer/models/llama/built.py) rebuild the fast
engines from nothing but the program's integers, so a node or challenger on
any machine computes the registered model's bits.

    python -m opinfer.models.built save all-minilm-l6-v2 minilm.npz

Operators use `opinfer model build` (opinfer/models/build.py) and nodes
`opinfer node run --model ID --program FILE` (docs/models.md, "Model
lifecycle"). Recomputing a file's Merkle root reads every weight (about 9 s
for SmolLM2 on 2 cores), so the file also carries a SHA-256 of its contents,
written by the build that computed the root: a loader checks that digest
(a fraction of a second) and takes the root the build sealed with it, or
with `verify="full"` recomputes the root itself (a file from someone else:
`opinfer model verify FILE`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.semantics.ops import CONTEXT, DENSE, EMBED_SUM, LAYER_NORM, LOOKUP, POOL, RESIDUAL, SOFTMAX, WEIGHT, Op
from opinfer.semantics.ops import DESC_WORDS
from opinfer.semantics.program import JobLimits, Program

FORMAT = 1
DTYPES = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
MASK128 = (1 << 128) - 1


def _digest(ops: bytes, packed: list[np.ndarray]) -> str:
    """SHA-256 over the ops and every weight tensor as stored (shape and packed bytes)."""
    h = hashlib.sha256(ops)
    for w in packed:
        h.update(json.dumps([str(w.dtype), list(w.shape)]).encode())
        h.update(np.ascontiguousarray(w))     # the buffer itself: no copy
    return h.hexdigest()


def save_program(program: Program, path, source: dict | None = None) -> bytes:
    """Write the built program to `path` (.npz; written beside it, then renamed, so a
    reader never sees half a file); returns its model root. `source` (what it was
    built from: file, package version) is kept in the metadata for `opinfer model`."""
    packed = [w.astype(DTYPES[width]) for w, width in zip(program.weights, program.widths)]
    arrays = {f"w{i}": w for i, w in enumerate(packed)}
    ops = b"".join(op.encode() for op in program.ops)
    arrays["ops"] = np.frombuffer(ops, dtype=np.uint8)
    meta = {"format": FORMAT, "name": program.name, "steps_mode": program.steps_mode,
            "limits": program.limits.word() if program.limits else 0,
            "widths": program.widths, "model_root": "0x" + program.model_root.hex(),
            "num_ops": program.num_ops, "sha256": _digest(ops, packed), "source": source or {}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return program.model_root


def read_meta(path) -> dict:
    """A program file's metadata (name, model_root, num_ops, limits, source) without
    reading its weights."""
    try:
        with np.load(Path(path)) as data:
            meta = json.loads(bytes(data["meta"]).decode())
    except FileNotFoundError:
        raise CommitmentError(f"{path}: not a built program file (no such file)") from None
    except (OSError, KeyError, ValueError) as exc:
        raise CommitmentError(f"{path}: not a built program file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CommitmentError(f"{path}: unknown program file format {meta.get('format')!r}")
    return meta


@dataclass
class ProgramView:
    """A program file's ops and weights at their stored widths (int8 .. int64), for
    building an engine without widening every weight to int64 first (SmolLM2: 1.1 GB);
    a model's from_program reads it like a Program (ops, weights) and widens what it keeps."""

    ops: list
    weights: list
    widths: list
    steps_mode: int
    name: str
    limits: JobLimits | None
    model_root: bytes

    @property
    def num_ops(self) -> int:
        return len(self.ops)


def _read(path, expected_root: bytes | None, verify: str):
    """(meta, ops, packed weights, checked root or None) of a program file."""
    if verify not in ("full", "digest"):
        raise ValueError(f"verify must be 'full' or 'digest', not {verify!r}")
    meta = read_meta(path)
    if expected_root is not None and meta["model_root"] != "0x" + expected_root.hex():
        # Refused before any weight is read: the file is another model (or another build).
        raise CommitmentError(f"{path}: root {meta['model_root']} is not the expected 0x{expected_root.hex()}")
    try:
        with np.load(Path(path)) as data:
            raw = bytes(data["ops"])
            packed = [data[f"w{i}"] for i in range(len(meta["widths"]))]
    except (OSError, KeyError, ValueError) as exc:
        raise CommitmentError(f"{path}: not a built program file ({exc})") from None
    size = 32 * DESC_WORDS
    ops = [Op.decode(raw[i:i + size]) for i in range(0, len(raw), size)]
    sealed = None
    if verify == "digest" and meta.get("sha256"):
        if _digest(raw, packed) != meta["sha256"]:
            raise CommitmentError(f"{path}: contents do not match the file's digest (damaged or edited file)")
        sealed = bytes.fromhex(meta["model_root"][2:])   # the root the build sealed with the digest
    return meta, ops, packed, sealed


def _program(path, meta, ops, packed, sealed) -> Program:
    # Files written before job limits existed have none (their root is the unlimited one).
    program = Program(ops, [w.astype(np.int64) for w in packed], list(meta["widths"]), meta["steps_mode"],
                      meta["name"], JobLimits.from_word(int(meta.get("limits", 0))))
    if sealed is not None:
        program.__dict__["model_root"] = sealed
    root = "0x" + program.model_root.hex()
    if root != meta["model_root"]:
        raise CommitmentError(f"{path}: contents give root {root}, the file says {meta['model_root']}")
    return program


def load_program(path, expected_root: bytes | None = None, verify: str = "full") -> Program:
    """Read a built program; its root must be the file's and, when given,
    `expected_root` (e.g. the registry's). verify="full" recomputes the Merkle
    root from the contents; "digest" checks the contents against the SHA-256 the
    build sealed with the root (files without one are verified in full)."""
    return _program(path, *_read(path, expected_root, verify))


def load_view(path, expected_root: bytes | None = None, verify: str = "digest") -> ProgramView:
    """The file's program at its stored widths (checked as load_program checks it)."""
    meta, ops, packed, sealed = _read(path, expected_root, verify)
    if sealed is None:              # no digest, or verify="full": the root from the contents
        sealed = _program(path, meta, ops, packed, None).model_root
    return ProgramView(ops, packed, list(meta["widths"]), meta["steps_mode"], meta["name"],
                       JobLimits.from_word(int(meta.get("limits", 0))), sealed)


# ---------------------------------------------------------------- where program files live

#: Where `opinfer model build` writes by default and where nodes and challengers look.
PROGRAMS_ENV = "OPINFER_PROGRAMS_DIR"


def programs_dir() -> Path:
    """$OPINFER_PROGRAMS_DIR, else ~/.opinfer/programs."""
    return Path(os.environ.get(PROGRAMS_ENV) or Path.home() / ".opinfer" / "programs")


def default_path(name: str, root: bytes, folder=None) -> Path:
    """<programs dir>/<name>-<first 8 hex digits of the root>.npz"""
    return Path(folder or programs_dir()) / f"{name}-{root.hex()[:8]}.npz"


def find_program(name: str, root: bytes | None, files=(), folder=None) -> Path | None:
    """The program file for model `name`: among `files` the one whose metadata names
    it, else <folder>/<name>-<root8>.npz (root given: the registry's), else the only
    <name>-*.npz in the folder. None when there is none."""
    for f in files:
        if read_meta(f)["name"] == name:
            return Path(f)
    folder = Path(folder or programs_dir())
    if root is not None and default_path(name, root, folder).is_file():
        return default_path(name, root, folder)
    found = sorted(folder.glob(f"{name}-*.npz")) if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


def _weight(program: Program, op: Op, slot: int) -> np.ndarray:
    ref = op.slots[slot].ref
    if ref >> 128 != WEIGHT:
        raise CommitmentError("expected a weight slot")
    return program.weights[ref & MASK128]


class _Cursor:
    """Walks a program's ops in order, checking each one's opcode."""

    def __init__(self, program: Program):
        self.program, self.at = program, 0

    def take(self, code: int) -> Op:
        if self.at >= len(self.program.ops) or self.program.ops[self.at].code != code:
            raise CommitmentError(f"op {self.at}: not the {code} the engine layout expects")
        self.at += 1
        return self.program.ops[self.at - 1]

    def w(self, op: Op, slot: int) -> np.ndarray:
        return _weight(self.program, op, slot)


# ---------------------------------------------------------------- all-MiniLM-L6-v2

def minilm_from_program(program: Program):
    from opinfer.models.minilm import engine as mm

    cur = _Cursor(program)
    emb = cur.take(EMBED_SUM)
    word, pos, typ = cur.w(emb, 1), cur.w(emb, 2), cur.w(emb, 3)[0]

    def layer_norm(op: Op) -> "mm.LayerNorm":
        p = cur.w(op, 1)
        return mm.LayerNorm(p[:, 0].copy(), p[:, 1].copy(), op.params[0])

    def dense(op: Op, in_max: int) -> "mm.Dense":
        p = cur.w(op, 2)
        return mm.Dense(cur.w(op, 1), p[:, 0].copy(), p[:, 1].copy(), *op.params[:3], in_max=in_max)

    ln0 = layer_norm(cur.take(LAYER_NORM))
    layers = []
    heads = None
    while cur.at < len(program.ops) and program.ops[cur.at].code == DENSE:
        q, k, v = (dense(cur.take(DENSE), 128) for _ in range(3))
        scores = program.ops[cur.at]
        cur.at += 1
        heads = (scores.rows >> 32) & 0xFFFFFFFF
        softmax = cur.take(SOFTMAX)
        cur.at += 1                                           # TRANSPOSE (v)
        ctx = cur.take(CONTEXT)
        o = dense(cur.take(DENSE), 128)
        r1 = cur.take(RESIDUAL)
        ln1 = layer_norm(cur.take(LAYER_NORM))
        up = dense(cur.take(DENSE), 128)
        lookup = cur.take(LOOKUP)
        gelu = cur.w(lookup, 1).reshape(-1)
        down = dense(cur.take(DENSE), int(np.abs(gelu).max()) + 1)
        r2 = cur.take(RESIDUAL)
        ln2 = layer_norm(cur.take(LAYER_NORM))
        layers.append(mm.Layer(q, k, v, softmax.params[0], softmax.params[1], ctx.params[2], ctx.params[3], o,
                               cur.w(r1, 2)[:, 0].copy(), r1.params[0], ln1, up, gelu.copy(), down,
                               cur.w(r2, 2)[:, 0].copy(), r2.params[0], ln2))
    cur.at += 1                                               # TRANSPOSE (last hidden state)
    pool = cur.take(POOL)
    return mm.IntMiniLM(word, pos, typ, ln0, layers, heads, cur.w(pool, 1)[:, 0].copy())


def main(argv=None) -> int:
    """python -m opinfer.models.built save NAME PATH | check PATH [ROOT]"""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 3 and args[0] == "save":
            from opinfer.models.minilm import program as minilm_program
            from opinfer.models.smollm2 import program as smollm2_program
            modules = {m.NAME: m for m in (minilm_program, smollm2_program)}
            if args[1] not in modules:
                raise CommitmentError(f"unknown model {args[1]!r}; one of {sorted(modules)}")
            root = save_program(modules[args[1]].default_program(), args[2])
            print(f"{args[1]}: 0x{root.hex()} -> {args[2]}")
            return 0
        if len(args) in (2, 3) and args[0] == "check":
            expected = bytes.fromhex(args[2].removeprefix("0x")) if len(args) == 3 else None
            program = load_program(args[1], expected)
            print(f"{program.name}: 0x{program.model_root.hex()} ok")
            return 0
    except CommitmentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
