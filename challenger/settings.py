"""Challenger settings: command-line flags, else OPINFER_CHALLENGER_* environment
variables, else (for rpc, rollup and key only) a running devnet's
.opinfer/devnet.json. The key is best passed in the environment (systemd
EnvironmentFile), not on the command line where `ps` shows it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from challenger.errors import ConfigError
from opinfer.chain.devnetinfo import DevnetInfo
from opinfer.semantics import merkle

ENV = "OPINFER_CHALLENGER_"
DEVNET_FILE = Path(".opinfer/devnet.json")


@dataclass
class Settings:
    rpc_url: str = ""
    private_key: str = field(default="", repr=False)   # never in logs or reprs
    rollup: str = ""
    state_path: str = ".opinfer/challenger.db"
    sample_rate: float = 0.2
    confirmations: int = -1         # -1: the chain kind's default (opinfer.chain.reorg: 0 on a devnet, 12 elsewhere)
    max_reorg_depth: int = 64       # reorganisations up to this deep are detected and re-scanned exactly
    poll_interval: float = 2.0
    start_block: int = 0
    log_span: int = 2000
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9465        # 0 or less: no metrics server
    secret: str = field(default="", repr=False)   # hex; default: derived from the private key
    bond_top_up: int = 0            # wei to deposit when the free bond runs short (0: never)
    workers: int = 2                # threads for re-checks and dispute traces (0: inline, tests only)
    recheck_budget: int = 256       # leaves per caught node re-executed beyond the sample, per open window
    log_level: str = "info"
    programs: str = ""              # built program files, comma-separated (`opinfer model build`)
    programs_dir: str = ""          # where else to look: <name>-<root8>.npz (default $OPINFER_PROGRAMS_DIR or ~/.opinfer/programs)
    devnet_file: str = str(DEVNET_FILE)

    @classmethod
    def load(cls, overrides: dict | None = None, env: dict | None = None) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.type, raw, f.name)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        s = cls(**values)
        s._from_devnet()
        s.validate()
        return s

    def _from_devnet(self) -> None:
        info = None if self.rpc_url and self.rollup and self.private_key else DevnetInfo.read(self.devnet_file)
        if info is None:
            return
        self.rpc_url = self.rpc_url or info.rpc_url
        self.rollup = self.rollup or info.rollup
        self.private_key = self.private_key or info.key("challenger")

    def validate(self) -> None:
        missing = [name for name in ("rpc_url", "rollup", "private_key") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"missing settings: {', '.join(missing)} (flags, {ENV}* or a devnet file)")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError(f"sample rate must lie in [0, 1], got {self.sample_rate}")
        if self.workers < 0 or self.recheck_budget < 0:
            raise ConfigError("workers >= 0 and recheck_budget >= 0 are required")
        if self.confirmations < -1 or self.log_span < 1 or self.poll_interval <= 0 or self.max_reorg_depth < 1:
            raise ConfigError("confirmations >= 0 (or -1: the chain's default), log span >= 1, "
                              "max reorg depth >= 1 and poll interval > 0 are required")

    def secret_bytes(self) -> bytes:
        """The sampling key. Derived from the private key by default: nodes
        never see it, and it stays the same across restarts."""
        if self.secret:
            return bytes.fromhex(self.secret.removeprefix("0x"))
        return merkle.keccak(b"opinfer-challenger-sampling" + bytes.fromhex(self.private_key.removeprefix("0x")))


def _convert(kind, raw: str, name: str):
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "int":
            return int(raw, 0)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{ENV}{name.upper()}: not a {kind}: {raw!r}") from None
    return raw
