"""Compiled contract artifacts (ABI, bytecode) produced by `brownie compile`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from opinfer.errors import ChainError

CONTRACTS = ("StakeManager", "ModelRegistry", "ResultRollup", "ElementRules", "DecoderOps", "StepVerifier",
             "DisputeGame")
DEFAULT_BUILD = Path(__file__).resolve().parents[2] / "build" / "contracts"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list
    bytecode: str
    path: Path


def load(name: str, build_dir: Path | str = DEFAULT_BUILD) -> Artifact:
    path = Path(build_dir) / f"{name}.json"
    if not path.exists():
        raise ChainError(f"no artifact for {name} at {path}: run `make compile` first")
    data = json.loads(path.read_text())
    return Artifact(name, data["abi"], data["bytecode"], path)
