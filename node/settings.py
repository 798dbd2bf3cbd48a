"""Node settings from the environment (prefix OPINFER_NODE_); chain id and
rollup address (the EIP-712 domain the node signs under) fall back to the
devnet description."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPINFER_NODE_", extra="ignore")

    key: str = Field("", repr=False)    # the staked node's private key
    chain_id: int = 0
    rollup_address: str = ""
    # name=model_id pairs, e.g. "all-minilm-l6-v2=1,smollm2-135m-instruct=2"
    models: str = ""
    host: str = "127.0.0.1"
    port: int = 8100
    concurrency: int = 1                # jobs run at once (the engines use every core)
    preload: bool = True
    devnet_file: str = ".opinfer/devnet.json"

    def model_ids(self) -> dict[str, int]:
        out = {}
        for pair in filter(None, (p.strip() for p in self.models.split(","))):
            name, _, model_id = pair.partition("=")
            out[name.strip()] = int(model_id)
        if not out and Path(self.devnet_file).exists():
            info = json.loads(Path(self.devnet_file).read_text())
            out = {name: m["id"] for name, m in info.get("models", {}).items()}
        return out

    def domain(self) -> tuple[int, str]:
        if self.chain_id and self.rollup_address:
            return self.chain_id, self.rollup_address
        info = json.loads(Path(self.devnet_file).read_text())
        return info["chain_id"], info["contracts"]["ResultRollup"]
