"""`opinfer model build`: a model's file -> its built integer program file.

    from opinfer.models import build
    spec, program = build.build("path/to/model.gguf")     # or a safetensors folder, or a model name
    built = build.build_file("all-minilm-l6-v2")           # writes <programs dir>/<name>-<root8>.npz
    built = build.cached(spec)                             # the devnet's: built once per package version

Which model a file holds is each model folder's call: its parts.accepts(path)
says yes for a file it can build (SmolLM2's: a llama GGUF of SmolLM2-135M's
sizes; MiniLM's: a BERT safetensors folder of its sizes) and
parts.build_program(path) builds it; the first spec (in registry order) that
accepts the file builds it. A GGUF file no folder claims goes to the llama
family's loader (opinfer/models/llama: register_gguf names it by its
general.name). A new model folder plugs in by defining the same two functions. No web3 here: registering the built file is opinfer/models/commands.py's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

from opinfer import models
from opinfer.errors import OpinferError
from opinfer.models.built import default_path, programs_dir, read_meta, save_program
from opinfer.models.spec import ModelSpec


class BuildError(OpinferError):
    """The source is not a model this library can build."""


@dataclass(frozen=True)
class Built:
    """A program file and what `opinfer model build` prints about it."""

    name: str
    model_root: bytes
    num_ops: int
    context: int            # positions a job may use, committed in the root (its job limits)
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def describe(self) -> str:
        return (f"model       {self.name}\nmodel_root  0x{self.model_root.hex()}\nops/step    {self.num_ops}\n"
                f"context     {self.context}\nfile        {self.path}\nsize        {self.size / 2**20:.1f} MiB")

    @classmethod
    def of_file(cls, path) -> "Built":
        meta = read_meta(path)
        from opinfer.semantics.program import JobLimits

        limits = JobLimits.from_word(int(meta.get("limits", 0)))
        return cls(meta["name"], bytes.fromhex(meta["model_root"][2:]), int(meta.get("num_ops") or 0),
                   limits.positions if limits else 0, Path(path))


def resolve(source: str) -> tuple[ModelSpec, Path | None]:
    """(spec, path) for a model file or folder; (spec, None) for a registered model's name
    (its installed weight package)."""
    path = Path(source).expanduser()
    if not path.exists():
        try:
            return models.get(source), None
        except models.UnknownModel:
            raise BuildError(f"{source}: no such file or folder, and no model of that name "
                             f"(models: {', '.join(sorted(models.names()))})") from None
    for spec in models.specs():
        accepts = getattr(spec.parts, "accepts", None)
        if accepts is not None and accepts(path):
            return spec, path
    if path.is_file() and path.open("rb").read(4) == b"GGUF":
        # Any other llama-family GGUF file: the family's loader registers it under its
        # general.name (opinfer/models/llama/parts.py; ModelFileError names what it refuses).
        from opinfer.models.llama.parts import register_gguf

        return register_gguf(path), path
    kind = "a GGUF file" if path.is_file() and path.open("rb").read(4) == b"GGUF" else \
        "a safetensors folder" if path.is_dir() and any(path.glob("*.safetensors")) else \
        "neither a GGUF file nor a safetensors folder"
    raise BuildError(f"{path}: {kind}; no model of this library accepts it "
                     f"(models: {', '.join(sorted(models.names()))}; docs/models.md, 'Adding a model')")


def _program_of(spec: ModelSpec, path: Path | None):
    """A folder's build_program(path) where it has one; else the spec's own program (a file
    registered at run time is bound to its file already)."""
    build_program = getattr(spec.parts, "build_program", None)
    return build_program(path) if build_program is not None else spec.load_program()


def build(source: str) -> tuple[ModelSpec, object]:
    """(spec, Program) built from a file, a folder or an installed model's name."""
    spec, path = resolve(source)
    return spec, _program_of(spec, path)


def package_version(spec: ModelSpec) -> str:
    try:
        return importlib.metadata.version(spec.package) if spec.package else ""
    except importlib.metadata.PackageNotFoundError:
        return ""


def build_file(source: str, out=None, extra_source: dict | None = None) -> Built:
    """Build and write the program file (default <programs dir>/<name>-<root8>.npz)."""
    spec, path = resolve(source)
    program = _program_of(spec, path)
    origin = {"from": str(path) if path else spec.package, "package_version": package_version(spec),
              **(extra_source or {})}
    target = Path(out) if out else default_path(program.name, program.model_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_program(program, target, origin)
    built = Built(program.name, program.model_root, program.num_ops,
                  program.limits.positions if program.limits else 0, target)
    del program
    spec.release()
    return built


def code_key(spec: ModelSpec) -> str:
    """What a model's built program depends on besides its weights: the weight package's
    version and our program-building code (the model folders and the integer semantics)."""
    h = hashlib.sha256(f"{spec.name}\0{spec.package}\0{package_version(spec)}".encode())
    # Every model folder (a family library such as llama/ builds other folders' programs)
    # and the semantics: a change anywhere rebuilds once (seconds), never a stale root.
    ours = Path(__file__).parents[1]
    for f in sorted([*(ours / "models").rglob("*.py"), *(ours / "semantics").glob("*.py")]):
        h.update(str(f.relative_to(ours)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def cached(spec: ModelSpec, folder=None) -> Built:
    """The program file of an installed model, built once per weight-package version and
    program code (the devnet's; an index.json in the folder maps that key to the file)."""
    folder = Path(folder or programs_dir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:                       # no writable home (a CI sandbox): a cache in the temp folder
        import tempfile

        folder = Path(tempfile.gettempdir()) / "opinfer-programs"
        folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    key = f"{spec.name}@{package_version(spec)}#{code_key(spec)}"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    if key in index and (folder / index[key]).is_file():
        try:
            return Built.of_file(folder / index[key])
        except OpinferError:
            pass                                  # a damaged file: build it again
    built = build_file(spec.name, folder / f".{spec.name}-{os.getpid()}.build.npz",
                       {"cache_key": key})
    final = default_path(built.name, built.model_root, folder)
    os.replace(built.path, final)
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[key] = final.name
    tmp = index_path.with_name(f".index.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)
    return Built.of_file(final)
