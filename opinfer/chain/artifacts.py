"""Contract artifacts: the ABIs shipped inside the package, and the compiled
artifacts (ABI and bytecode) that `brownie compile` writes to build/.

Reading a deployed contract needs only its ABI, so `abi(name)` reads the
copy shipped in opinfer/chain/abi/ (package data): a client installed with
`pip install opinfer` verifies results without a checkout or a compiler.
Deploying needs bytecode, so `load(name)` reads build/contracts/ (a
checkout after `make compile`).

The shipped copies are generated, never edited: `make compile` (or
`python -m opinfer.chain.artifacts export` after `brownie compile`) writes
them from build/, and tests/integration/test_packaged_abis.py fails when
they differ from the freshly compiled ones, so they cannot drift.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from opinfer.errors import ChainError

CONTRACTS = ("StakeManager", "ModelRegistry", "ResultRollup", "ElementRules", "DecoderOps", "StepVerifier",
             "DisputeGame")
DEFAULT_BUILD = Path(__file__).resolve().parents[2] / "build" / "contracts"
ABI_DIR = Path(__file__).resolve().parent / "abi"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list
    bytecode: str
    path: Path


def abi(name: str) -> list:
    """The shipped ABI of a protocol contract (a fresh list: callers may keep it)."""
    return json.loads(_abi_text(name))


@functools.lru_cache(maxsize=None)
def _abi_text(name: str) -> str:
    path = ABI_DIR / f"{name}.json"
    if name not in CONTRACTS or not path.exists():
        raise ChainError(f"no shipped ABI for {name!r}: the package ships {', '.join(CONTRACTS)}")
    return path.read_text()


def load(name: str, build_dir: Path | str = DEFAULT_BUILD) -> Artifact:
    """The compiled artifact (for deploying): ABI and bytecode from build/."""
    path = Path(build_dir) / f"{name}.json"
    if not path.exists():
        raise ChainError(f"no artifact for {name} at {path}: run `make compile` first")
    data = json.loads(path.read_text())
    return Artifact(name, data["abi"], data["bytecode"], path)


def render(abi_list: list) -> str:
    """The shipped form of an ABI: stable key order and indentation, so a diff shows what changed."""
    return json.dumps(abi_list, indent=1, sort_keys=True) + "\n"


def export(build_dir: Path | str = DEFAULT_BUILD, out_dir: Path | str = ABI_DIR) -> list[Path]:
    """Write the shipped ABIs from the compiled artifacts in build_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CONTRACTS:
        target = out / f"{name}.json"
        target.write_text(render(load(name, build_dir).abi))
        written.append(target)
    _abi_text.cache_clear()
    return written


if __name__ == "__main__":
    if sys.argv[1:] != ["export"]:
        sys.exit("usage: python -m opinfer.chain.artifacts export   (after `brownie compile`)")
    for p in export():
        print(f"wrote {p}")
