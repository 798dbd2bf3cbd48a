"""Node settings from the environment (prefix OPINFER_NODE_), overridden by
`opinfer node run` flags; chain id, rollup address and RPC URL fall back to
the devnet description (.opinfer/devnet.json)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from node.errors import NodeError
from opinfer.chain.devnetinfo import DevnetInfo


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPINFER_NODE_", extra="ignore")

    key: str = Field("", repr=False)    # the staked node's private key
    chain_id: int = 0
    rollup_address: str = ""
    rpc_url: str = ""
    # name=model_id pairs, e.g. "all-minilm-l6-v2=1,smollm2-135m-instruct=2"
    models: str = ""
    host: str = "127.0.0.1"
    port: int = 8100
    endpoint: str = ""                  # URL announced in the registry (default http://host:port)
    stake_eth: float = 0.0              # stake to hold; 0: require an existing stake
    concurrency: int = 1                # engine passes at once per model (the engines use every core)
    max_batch: int = 8                  # jobs per engine pass (chat: jobs decoding together)
    prefill_tokens: int = 64            # chat: prompt tokens per decode step (0: whole prompts); bounds stalls
    preload: bool = True
    # Built program files (`opinfer model build`), comma-separated; a model without one here is
    # looked up in programs_dir as <name>-<root8>.npz (default $OPINFER_PROGRAMS_DIR or ~/.opinfer/programs)
    programs: str = ""
    programs_dir: str = ""
    verify_program: bool = False        # recompute each file's Merkle root at start (SmolLM2: ~9 s more)
    drain_seconds: int = 60             # graceful shutdown: wait this long for in-flight jobs
    auth_token: str = Field("", repr=False)   # Authorization: Bearer <token>
    trusted: str = ""                   # comma-separated coordinator addresses (signed requests)
    state_path: str = ""                # defender state (default .opinfer/node-<address>.db)
    poll_interval: float = 1.0          # defender: seconds between passes
    start_block: int = -1               # defender: first block to scan for a new state file (-1: head)
    log_level: str = "info"
    devnet_file: str = ".opinfer/devnet.json"

    def _devnet(self) -> DevnetInfo:
        return DevnetInfo.read(self.devnet_file) or DevnetInfo(Path(self.devnet_file), {})

    def model_ids(self) -> dict[str, int]:
        out = {}
        for pair in filter(None, (p.strip() for p in self.models.split(","))):
            name, _, model_id = pair.partition("=")
            out[name.strip()] = int(model_id)
        if not out:
            out = self._devnet().model_ids()
        return out

    def domain(self) -> tuple[int, str]:
        if self.chain_id and self.rollup_address:
            return self.chain_id, self.rollup_address
        info = self._devnet()
        if not info.data:
            raise NodeError("no chain id / rollup address: set OPINFER_NODE_CHAIN_ID and OPINFER_NODE_ROLLUP_ADDRESS "
                            "or start a devnet")
        return info.chain_id, info.rollup

    def chain(self) -> tuple[str, str]:
        """(rpc url, rollup address)."""
        info = self._devnet()
        rpc = self.rpc_url or info.rpc_url
        rollup = self.rollup_address or info.rollup
        if not rpc or not rollup:
            raise NodeError("no chain: pass --rpc and --rollup (or OPINFER_NODE_RPC_URL / OPINFER_NODE_ROLLUP_ADDRESS),"
                            " or start a devnet")
        return rpc, rollup

    def program_files(self) -> list[str]:
        return [p.strip() for p in self.programs.split(",") if p.strip()]

    def trusted_list(self) -> list[str]:
        return [a.strip() for a in self.trusted.split(",") if a.strip()]

    def authenticator(self):
        from node.auth import Authenticator

        return Authenticator(self.auth_token, self.trusted_list())
