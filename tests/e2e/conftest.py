"""One devnet for the e2e suite: `opinfer devnet up --detach` as a user runs
it (anvil, contracts, both models, coordinator, an honest and a dishonest
node, a challenger sampling every leaf), on free ports in a temporary
directory, with a 20 s challenge window; `opinfer devnet down` afterwards."""

import json
import subprocess
import sys

import pytest

from opinfer.chain.anvil import free_port

WINDOW = 20
CLOCK = 60          # per party: the dishonest node defends (bisection), each move builds its trace


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end to end on a devnet of processes (anvil)")


def run_cli(args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "opinfer.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def devnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("devnet")
    up = run_cli(["devnet", "up", "--detach", "--port", str(free_port()), "--api-port", str(free_port()),
                  "--nodes", "2", "--dishonest", "1", "--window", str(WINDOW), "--clock", str(CLOCK),
                  "--batch-interval", "1"], root)
    assert up.returncode == 0, up.stdout + up.stderr + (root / ".opinfer" / "devnet.log").read_text()
    info = json.loads((root / ".opinfer" / "devnet.json").read_text())
    info["cwd"] = root
    info["up_stdout"] = up.stdout
    yield info
    down = run_cli(["devnet", "down"], root, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not (root / ".opinfer" / "devnet.json").exists()


@pytest.fixture(scope="session")
def client(devnet):
    from opinfer import Client

    c = Client(api_key="sk-devnet", network=devnet["api_url"], rpc_url=devnet["rpc_url"],
               chain_id=devnet["chain_id"], rollup_address=devnet["contracts"]["ResultRollup"],
               registry_address=devnet["contracts"]["ModelRegistry"])
    yield c
    c.close()
