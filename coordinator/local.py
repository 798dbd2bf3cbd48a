"""A local network in one process, for tests, benches and demos: the shared
test network (opinfer.chain.testnet: anvil, the protocol deployed, models
registered), staked nodes announced in the registry and served over real
HTTP (uvicorn on 127.0.0.1), and the coordinator's app served the same way."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from opinfer import models as registry_models
from opinfer.chain.deploy import ProtocolParams
from opinfer.chain.testnet import ProtocolNet
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
class LocalNetwork(ProtocolNet):
    """The shared test network (opinfer.chain.testnet) with the library's models
    registered and nodes node1..nodeN (keys in `node_keys`) to serve them."""

    node_servers: list[ServerThread] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)

    @property
    def node_roles(self) -> list[str]:
        return [role for role in self.keys if role.startswith("node")]

    @property
    def node_keys(self) -> list[str]:
        return [self.keys[role] for role in self.node_roles]

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

    def stop(self) -> None:
        for server in self.node_servers:
            server.stop()
        super().stop()


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
    """Anvil + protocol + models + n nodes (not yet staked nor serving: see serve_nodes).

    models: the kinds to register, each the library's model of that kind
    (opinfer/models) at its spec's price. chat_root: "program" registers the
    chat model's real model root (building its program takes a while),
    "placeholder" a stand-in root."""
    net = LocalNetwork.start(ROLES + tuple(f"node{i + 1}" for i in range(n_nodes)),
                             ProtocolParams(challenge_window=window, clock_budget=60), hardfork="cancun",
                             accounts=10 + n_nodes)
    try:
        for kind in models:
            spec = registry_models.by_kind(kind)[0]
            if kind == registry_models.EMBEDDING:
                p = spec.load_program()
            else:
                p = chat_program() if chat_root == "program" else Placeholder(spec.name)
            if isinstance(p, Placeholder):
                net.placeholders.append(p.name)
            net.register(p, spec.price_wei)
        return net
    except BaseException:
        net.stop()
        raise


def serve_nodes(net: LocalNetwork, announce: bool = True) -> list[ServerThread]:
    """Start a node server per node role (engines shared in-process), stake and announce each."""
    from node.app import Node, create_app

    for role in net.node_roles:
        node = Node(net.keys[role], net.chain_id, net.rollup, net.models)
        server = ServerThread(create_app(node=node)).start()
        net.node_servers.append(server)
        if announce:
            net.stake(role)
            net.announce(role, server.url)
    return net.node_servers
