"""A local devnet: anvil plus the deployed protocol, described in
.opinfer/devnet.json so that other processes (and people) can find it.

Services (coordinator, nodes, challenger) join with the issues that build
them; today the devnet is the chain and the contracts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from web3 import HTTPProvider, Web3

from opinfer.chain import artifacts
from opinfer.chain.anvil import Anvil, dev_keys
from opinfer.chain.deploy import Deployment, ProtocolParams, deploy, register_program
from opinfer.chain.sender import TxSender
from opinfer.errors import ChainError

STATE_DIR = Path(".opinfer")
STATE_FILE = STATE_DIR / "devnet.json"
# Roles of anvil's development accounts (public keys: for devnets only).
# Prices in wei per 1,000 tokens (ModelRegistry.price_per_1k); devnet figures.
MINILM_PRICE_WEI = 10**9
SMOLLM2_PRICE_WEI = 5 * 10**9
ROLES = ("deployer", "coordinator", "challenger", "node1", "node2", "node3")


def start(port: int = 8545, window: int = 600, clock: int = 300) -> tuple[Anvil, Deployment, dict]:
    anvil = Anvil(port=port, accounts=10).start()
    try:
        w3 = Web3(HTTPProvider(anvil.url))
        keys = dict(zip(ROLES, dev_keys(len(ROLES))))
        owner = TxSender(w3, keys["deployer"])
        coordinator = TxSender(w3, keys["coordinator"]).address
        params = ProtocolParams(challenge_window=window, clock_budget=clock)
        deployment = deploy(w3, owner, params, coordinators=(coordinator,))
        models = register_models(owner, deployment.contracts["ModelRegistry"])
    except Exception:
        anvil.stop()
        raise
    info = {
        "rpc_url": anvil.url,
        "chain_id": deployment.chain_id,
        "contracts": deployment.addresses,
        "artifacts": {name: str(artifacts.load(name).path) for name in artifacts.CONTRACTS},
        "params": deployment.to_json()["params"],
        "models": models,
        "accounts": {role: {"address": TxSender(w3, key).address, "private_key": key} for role, key in keys.items()},
        "pid": os.getpid(),
        "anvil_pid": anvil.proc.pid,
    }
    STATE_DIR.mkdir(exist_ok=True)
    STATE_FILE.write_text(json.dumps(info, indent=2))
    return anvil, deployment, info


def register_models(owner: TxSender, registry) -> dict:
    """Register both models under the roots of their programs, rebuilt from
    the installed weight packages (deterministic on a machine: the same root
    in every process and thread count; about 30 s and 4 GB for both)."""
    from opinfer.engine import minilm_program, smollm2, smollm2_program

    out = {}
    for module, price in ((minilm_program, MINILM_PRICE_WEI), (smollm2_program, SMOLLM2_PRICE_WEI)):
        program = module.default_program()
        model_id = register_program(owner, registry, program, price)
        out[program.name] = {"id": model_id, "model_root": "0x" + program.model_root.hex(),
                             "ops_per_step": program.num_ops}
    # The devnet only needed the roots: give the programs' memory back.
    for cached in (minilm_program.default_program, smollm2_program.default_program, smollm2.default_model):
        cached.cache_clear()
    return out


def up(port: int, window: int, clock: int) -> int:
    anvil, _, info = start(port, window, clock)
    print(f"opinfer devnet: anvil at {info['rpc_url']} (chain id {info['chain_id']})")
    for name, address in info["contracts"].items():
        print(f"  {name:<14} {address}")
    print(f"state written to {STATE_FILE}; Ctrl-C stops everything")
    stop = {"now": False}

    def handle(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    try:
        while not stop["now"]:
            if anvil.proc.poll() is not None:
                print("anvil exited")
                return 1
            time.sleep(0.5)
    finally:
        anvil.stop()
        STATE_FILE.unlink(missing_ok=True)
        print("devnet stopped")
    return 0


def down() -> int:
    if not STATE_FILE.exists():
        raise ChainError(f"no running devnet ({STATE_FILE} not found)")
    info = json.loads(STATE_FILE.read_text())
    for pid in (info.get("pid"), info.get("anvil_pid")):
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    STATE_FILE.unlink(missing_ok=True)
    print("devnet stopped")
    return 0
