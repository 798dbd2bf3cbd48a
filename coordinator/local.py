"""A local network in one process, for tests, benches and demos: anvil with
the protocol deployed, models registered, staked nodes announced in the
registry and served over real HTTP (uvicorn on 127.0.0.1), and the
coordinator's app served the same way."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from web3 import HTTPProvider, Web3

from opinfer import models as registry_models
from opinfer.chain.anvil import Anvil, dev_keys
from opinfer.chain.deploy import Deployment, ProtocolParams, deploy, register_program
from opinfer.chain.sender import TxSender
from opinfer.semantics import merkle

ROLES = ("deployer", "coordinator", "challenger")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a daemon thread."""

    def __init__(self, app, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Placeholder:
    """A registry entry for a model whose program is not built here."""

    name: str
    num_ops: int = 1

    @property
    def model_root(self) -> bytes:
        return merkle.keccak(b"placeholder model root: " + self.name.encode())


@dataclass
class LocalNetwork:
    anvil: Anvil
    w3: Web3
    deployment: Deployment
    keys: dict[str, str]
    models: dict[str, int]              # name -> model id
    node_keys: list[str]
    node_servers: list[ServerThread] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)

    @property
    def addresses(self) -> dict[str, str]:
        return self.deployment.addresses

    def coordinator_env(self) -> dict[str, str]:
        return {"OPINFER_RPC_URL": self.anvil.url, "OPINFER_CHAIN_ID": str(self.deployment.chain_id),
                "OPINFER_ROLLUP_ADDRESS": self.addresses["ResultRollup"],
                "OPINFER_REGISTRY_ADDRESS": self.addresses["ModelRegistry"],
                "OPINFER_STAKE_MANAGER_ADDRESS": self.addresses["StakeManager"],
                "OPINFER_COORDINATOR_KEY": self.keys["coordinator"],
                "OPINFER_ALLOW_PRIVATE_ENDPOINTS": "true", "OPINFER_REQUIRE_API_KEY": "false",
                "OPINFER_PUBLIC_METRICS": "true", "OPINFER_ANONYMOUS_RATE_LIMIT_RPM": "0"}

    def settings(self, **overrides):
        from coordinator.settings import Settings

        base = dict(rpc_url=self.anvil.url, chain_id=self.deployment.chain_id,
                    rollup_address=self.addresses["ResultRollup"], registry_address=self.addresses["ModelRegistry"],
                    stake_manager_address=self.addresses["StakeManager"], coordinator_key=self.keys["coordinator"],
                    devnet_file="/nonexistent",
                    # a local network: nodes on 127.0.0.1, keyless requests, open metrics (all explicit)
                    allow_private_endpoints=True, require_api_key=False, public_metrics=True,
                    anonymous_rate_limit_rpm=0)
        return Settings(**{**base, **overrides})

    def time_travel(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def stop(self) -> None:
        for server in self.node_servers:
            server.stop()
        self.anvil.stop()


def chat_program(allow_placeholder: bool = True):
    """The chat model's program when it can be built here, else a placeholder root."""
    spec = registry_models.by_kind(registry_models.CHAT)[0]
    try:
        return spec.load_program()
    except ImportError:
        if not allow_placeholder:
            raise
        return Placeholder(spec.name)


def start_network(n_nodes: int = 3, window: int = 60,
                  models: tuple[str, ...] = (registry_models.EMBEDDING, registry_models.CHAT),
                  chat_root: str = "program") -> LocalNetwork:
    """Anvil + protocol + models + n staked, announced nodes (not yet serving: see serve_nodes).

    models: the kinds to register, each the library's model of that kind
    (opinfer/models) at its spec's price. chat_root: "program" registers the
    chat model's real model root (building its program takes a while),
    "placeholder" a stand-in root."""
    anvil = Anvil(accounts=10 + n_nodes, hardfork="cancun").start()
    try:
        w3 = Web3(HTTPProvider(anvil.url))
        all_keys = dev_keys(len(ROLES) + n_nodes)
        keys = dict(zip(ROLES, all_keys))
        owner = TxSender(w3, keys["deployer"])
        coordinator = TxSender(w3, keys["coordinator"]).address
        d = deploy(w3, owner, ProtocolParams(challenge_window=window, clock_budget=60), coordinators=(coordinator,))
        registry = d.contracts["ModelRegistry"]
        ids, placeholders = {}, []
        for kind in models:
            spec = registry_models.by_kind(kind)[0]
            if kind == registry_models.EMBEDDING:
                p = spec.load_program()
            else:
                p = chat_program() if chat_root == "program" else Placeholder(spec.name)
            if isinstance(p, Placeholder):
                placeholders.append(p.name)
            ids[p.name] = register_program(owner, registry, p, spec.price_wei)
        return LocalNetwork(anvil, w3, d, keys, ids, all_keys[len(ROLES):], placeholders=placeholders)
    except Exception:
        anvil.stop()
        raise


def serve_nodes(net: LocalNetwork, announce: bool = True) -> list[ServerThread]:
    """Start a node server per node key (engines shared in-process), stake and announce each."""
    from node.app import Node, create_app

    stake = net.deployment.contracts["StakeManager"]
    registry = net.deployment.contracts["ModelRegistry"]
    for key in net.node_keys:
        node = Node(key, net.deployment.chain_id, net.addresses["ResultRollup"], net.models)
        server = ServerThread(create_app(node=node)).start()
        net.node_servers.append(server)
        if announce:
            sender = TxSender(net.w3, key)
            sender.call(stake.functions.stake_eth(), value=2 * 10**18)
            sender.call(registry.functions.announce(server.url, list(net.models.values())))
    return net.node_servers
