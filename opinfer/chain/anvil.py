"""Start and stop a local anvil chain (from node_modules/.bin)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from web3 import HTTPProvider, Web3

from opinfer.errors import ChainError
from opinfer.lifetime import child_preexec

REPO = Path(__file__).resolve().parents[2]
# anvil's well-known development mnemonic: its keys are public, for devnets only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


def anvil_binary() -> str:
    local = REPO / "node_modules" / ".bin" / "anvil"
    found = str(local) if local.exists() else shutil.which("anvil")
    if not found:
        raise ChainError("anvil not found: run `make deps` (npm ci installs @foundry-rs/anvil)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_keys(count: int) -> list[str]:
    """Private keys of anvil's first `count` development accounts."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key.hex()
            for i in range(count)]


class Anvil:
    """An anvil process on 127.0.0.1; use as a context manager."""

    def __init__(self, port: int | None = None, accounts: int = 10, gas_limit: int = 30_000_000,
                 block_time: int | None = None, hardfork: str | None = None, tied: bool = False):
        # tied: SIGTERM anvil when the process that started it dies (a supervisor's chain).
        # Off by default: the signal follows the starting *thread*, and tests start chains anywhere.
        self.tied = tied
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [anvil_binary(), "--host", "127.0.0.1", "--port", str(self.port), "--accounts", str(accounts),
               "--gas-limit", str(gas_limit), "--block-base-fee-per-gas", "0", "--silent"]
        if hardfork:
            cmd += ["--hardfork", hardfork]
        if block_time:
            cmd += ["--block-time", str(block_time)]
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "Anvil":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=dict(os.environ), preexec_fn=child_preexec() if self.tied else None)
        w3 = Web3(HTTPProvider(self.url))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChainError(f"anvil exited: {self.proc.stderr.read().decode(errors='replace')[-500:]}")
            try:
                if w3.is_connected():
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        self.stop()
        raise ChainError(f"anvil did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def __enter__(self) -> "Anvil":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
