"""Where a client finds the coordinator and the chain.

network="devnet": read the running devnet's description (.opinfer/devnet.json,
or OPINFER_DEVNET_FILE): API url, RPC url, chain id, contract addresses.
network=<URL>: the coordinator's base URL; the chain coordinates, which
verification must not take from the coordinator, come from the arguments
or OPINFER_RPC_URL, OPINFER_CHAIN_ID, OPINFER_ROLLUP_ADDRESS,
OPINFER_REGISTRY_ADDRESS."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from opinfer.chain import devnetinfo
from opinfer.sdk.errors import ConfigurationError

DEFAULT_DEVNET_FILE = devnetinfo.DEFAULT_FILE


@dataclass
class Network:
    api_url: str                    # base URL without /v1
    rpc_url: str | None = None
    chain_id: int | None = None
    rollup: str | None = None
    registry: str | None = None
    name: str = "custom"

    @property
    def can_verify(self) -> bool:
        return bool(self.rpc_url and self.rollup)


def devnet_file() -> Path:
    return devnetinfo.devnet_file()


def resolve(network: str | None, rpc_url: str | None = None, chain_id: int | None = None,
            rollup: str | None = None, registry: str | None = None) -> Network:
    network = network or os.environ.get("OPINFER_NETWORK") or "devnet"
    env = os.environ
    if network == "devnet":
        info = devnetinfo.DevnetInfo.read()
        if info is None:
            raise ConfigurationError(f"no running devnet: {devnet_file()} not found (start one with `make up` or "
                                     "`opinfer devnet up`), or pass network=<coordinator URL>")
        if not info.api_url:
            raise ConfigurationError(f"{info.path} has no api_url: the devnet runs without a coordinator")
        return Network(info.api_url.rstrip("/").removesuffix("/v1"), rpc_url or info.rpc_url,
                       chain_id or info.chain_id, rollup or info.rollup, registry or info.registry, name="devnet")
    if not network.startswith(("http://", "https://")):
        raise ConfigurationError(f"network must be 'devnet' or an http(s) URL, got {network!r}")
    cid = chain_id or (int(env["OPINFER_CHAIN_ID"]) if env.get("OPINFER_CHAIN_ID") else None)
    return Network(network.rstrip("/").removesuffix("/v1"), rpc_url or env.get("OPINFER_RPC_URL") or None, cid,
                   rollup or env.get("OPINFER_ROLLUP_ADDRESS") or None,
                   registry or env.get("OPINFER_REGISTRY_ADDRESS") or None)
