"""The running devnet's description (.opinfer/devnet.json), read in one
place: the SDK (network="devnet"), the node's, coordinator's and challenger's
settings fall back on it for the chain's coordinates, and the supervisor
(opinfer/devnet.py) writes it. Plain data: no web3 (the SDK imports it)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FILE = ".opinfer/devnet.json"
ENV = "OPINFER_DEVNET_FILE"


def devnet_file(path: str | Path | None = None) -> Path:
    """`path`, else $OPINFER_DEVNET_FILE, else .opinfer/devnet.json."""
    return Path(path or os.environ.get(ENV) or DEFAULT_FILE)


@dataclass(frozen=True)
class DevnetInfo:
    path: Path
    data: dict

    @classmethod
    def read(cls, path: str | Path | None = None) -> "DevnetInfo | None":
        """The description at `path` (see devnet_file); None when there is none."""
        where = devnet_file(path)
        if not where.exists():
            return None
        return cls(where, json.loads(where.read_text()))

    @property
    def rpc_url(self) -> str:
        return self.data.get("rpc_url", "")

    @property
    def chain_id(self) -> int:
        return int(self.data.get("chain_id") or 0)

    @property
    def api_url(self) -> str:
        return self.data.get("api_url") or ""

    def contract(self, name: str) -> str:
        return self.data.get("contracts", {}).get(name, "")

    @property
    def rollup(self) -> str:
        return self.contract("ResultRollup")

    @property
    def registry(self) -> str:
        return self.contract("ModelRegistry")

    @property
    def stake_manager(self) -> str:
        return self.contract("StakeManager")

    def key(self, role: str) -> str:
        """The private key the devnet gave `role` ("" when none: anvil's public keys, devnets only)."""
        return self.data.get("accounts", {}).get(role, {}).get("private_key", "")

    def model_ids(self) -> dict[str, int]:
        return {name: m["id"] for name, m in self.data.get("models", {}).items()}
