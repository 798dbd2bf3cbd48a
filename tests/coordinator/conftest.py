"""One local network per test session: anvil with the protocol deployed,
MiniLM and SmolLM2 registered, three staked nodes announced in the registry
and serving the real engines over HTTP. Each test module gets its own
coordinator (own SQLite file) on a random port."""

import os

import pytest

from coordinator.app import Coordinator, create_app
from coordinator.local import ServerThread, serve_nodes, start_network

# SmolLM2 is registered under its real model root (its program takes ~20 s
# to build); OPINFER_TEST_CHAT_ROOT=placeholder registers a stand-in root.
CHAT_ROOT = os.environ.get("OPINFER_TEST_CHAT_ROOT", "program")


@pytest.fixture(scope="session")
def net():
    from node import engines

    network = start_network(n_nodes=3, window=60, chat_root=CHAT_ROOT)
    try:
        serve_nodes(network)
        for name in engines.ENGINES:
            engines.load(name)
        yield network
    finally:
        network.stop()


class Running:
    def __init__(self, coordinator: Coordinator, server: ServerThread):
        self.c, self.server, self.url = coordinator, server, server.url

    def stop(self):
        self.server.stop()


def run_coordinator(net, db_path, **overrides) -> Running:
    settings = net.settings(**{"database_url": f"sqlite:///{db_path}", "scheduler": False, **overrides})
    c = Coordinator(settings)
    return Running(c, ServerThread(create_app(coordinator=c)).start())


@pytest.fixture(scope="module")
def coord(net, tmp_path_factory):
    running = run_coordinator(net, tmp_path_factory.mktemp("coord") / "c.db")
    yield running
    running.stop()
