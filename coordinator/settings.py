"""Coordinator settings, read from the environment (prefix OPINFER_) or a .env file.

Chain coordinates come either from the settings themselves or from a devnet
description (.opinfer/devnet.json) named by OPINFER_DEVNET_FILE."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from opinfer.chain.devnetinfo import DevnetInfo


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPINFER_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///.opinfer/coordinator.db"
    # Chain. Left empty, they are read from devnet_file.
    devnet_file: str = ".opinfer/devnet.json"
    rpc_url: str = ""
    chain_id: int = 0
    rollup_address: str = ""
    registry_address: str = ""
    stake_manager_address: str = ""
    coordinator_key: str = Field("", repr=False)

    # API keys. Secure by default: every request needs a valid key; a devnet
    # turns this off explicitly (then keyless requests are served, but a key
    # that is sent must still be valid: an invalid one is a 401, never anonymous).
    require_api_key: bool = True
    rate_limit_rpm: int = 600           # per key, in jobs (a consensus-k request is k jobs); 0 = unlimited
    anonymous_rate_limit_rpm: int = 60  # keyless requests (when allowed), all together; 0 = unlimited
    auth_failure_rpm: int = 30          # failed key lookups per client address before 429s
    key_cache_entries: int = 10_000     # remembered key lookups (least recently used dropped first)
    # GET /metrics without an API key (a devnet, or a scraper on a private network).
    public_metrics: bool = False

    # Request limits (each error names the one it hit).
    max_body_bytes: int = 1_000_000
    max_embedding_inputs: int = 64
    # None: the model's own limits (its spec, opinfer/models: SmolLM2 takes up to 4,095 new tokens
    # and a context of 4,096 positions, i.e. prompt + max_tokens <= 4,097); a number caps them lower
    max_completion_tokens: int | None = None
    default_max_tokens: int = 64
    # prompt + completion tokens; None: the model's context + 1 (a job of L + M - 1 <= context positions;
    # past it a job has no verifiable trace); a number caps it lower
    max_context_tokens: int | None = None
    max_stop_sequences: int = 4
    max_consensus: int = 5
    max_choices: int = 8                # `n`: each choice is a job of its own

    # Nodes.
    node_timeout_s: float = 60.0
    node_connect_timeout_s: float = 2.0
    # A stream may take node_timeout_s + max_tokens x this (each read at most node_timeout_s):
    # a node that drips its stream is cut off, an honest one (about 0.1 s a token here) is not.
    node_token_timeout_s: float = 1.0
    max_attempts: int = 3
    backoff_base_s: float = 0.05
    backoff_cap_s: float = 1.0
    eject_after_failures: int = 3
    eject_for_s: float = 30.0
    static_nodes: str = ""              # "address@http://host:port,..." in addition to the registry
    # Node endpoints on loopback, link-local or private addresses (devnet only: any staked
    # node may announce any endpoint, and the coordinator would call it from inside its network).
    allow_private_endpoints: bool = False
    node_health_timeout_s: float = 5.0
    max_node_answer_bytes: int = 256 * 1024

    # Cache.
    cache_ttl_s: float = 300.0
    cache_stale_s: float = 3600.0       # how long past the TTL a stale answer may still be served
    cache_entries: int = 10_000

    # Scheduler.
    batch_interval_s: float = 5.0
    batch_max_jobs: int = 64            # a batch is posted as soon as this many leaves wait
    finalize_interval_s: float = 5.0
    node_refresh_s: float = 15.0
    # Blocks on top of a transaction before the coordinator relies on it (a batch `posted`, a
    # finalize, a dispute event); -1: the chain kind's default (0 on a devnet, 12 elsewhere:
    # opinfer.chain.reorg.default_confirmations).
    confirmations: int = -1
    max_reorg_depth: int = 64           # reorganisations up to this deep are detected and undone exactly
    posting_stall_s: float = 60.0       # /healthz is degraded when an answered leaf waits longer to be posted
    receipt_timeout_s: float = 120.0
    scheduler: bool = True              # tests drive the jobs by hand

    # Explorer (/explorer). The RPC URL handed to browsers for their own chain reads (empty:
    # rpc_url; set it where browsers reach the chain at another address), and the block its
    # event index starts from (the protocol's deployment block spares a scan from genesis).
    explorer_rpc_url: str = ""
    explorer_from_block: int = 0

    def chain(self) -> dict:
        """rpc_url, chain_id and contract addresses, filled from devnet_file where empty."""
        out = {"rpc_url": self.rpc_url, "chain_id": self.chain_id, "rollup": self.rollup_address,
               "registry": self.registry_address, "stake_manager": self.stake_manager_address,
               "key": self.coordinator_key}
        info = DevnetInfo.read(self.devnet_file) if not out["rpc_url"] or not out["rollup"] else None
        if info is not None:
            out["rpc_url"] = out["rpc_url"] or info.rpc_url
            out["chain_id"] = out["chain_id"] or info.chain_id
            out["rollup"] = out["rollup"] or info.rollup
            out["registry"] = out["registry"] or info.registry
            out["stake_manager"] = out["stake_manager"] or info.stake_manager
            out["key"] = out["key"] or info.key("coordinator")
        return out
