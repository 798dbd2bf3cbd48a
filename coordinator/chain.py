"""The coordinator's view of the chain: models and nodes from the registry,
batch and leaf state from the rollup. Reads only; posting is poster.py."""

from __future__ import annotations

from dataclasses import dataclass

from web3 import HTTPProvider, Web3

from opinfer.chain.deploy import contract
from opinfer.trace.tables import LEAF_STATUS_NAMES

LEAF_STATUS = LEAF_STATUS_NAMES   # ResultRollup.leaf_status codes


@dataclass(frozen=True)
class ModelInfo:
    id: int
    name: str
    model_root: bytes
    num_ops: int
    price_per_1k: int   # wei per 1,000 tokens (prompt + completion)
    active: bool

    def cost_wei(self, tokens: int) -> int:
        return -(-self.price_per_1k * tokens // 1000)  # rounded up


@dataclass(frozen=True)
class NodeRecord:
    address: str
    endpoint: str
    model_ids: tuple[int, ...]
    staked: bool
    stake_wei: int


class Chain:
    def __init__(self, rpc_url: str, rollup: str, registry: str, stake_manager: str = "", w3: Web3 | None = None):
        if w3 is None:
            w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
            # web3's validation middleware asks the node for eth_chainId before
            # every call and estimate: a second round trip each time, on a path
            # that shares the process with request handling. Our transactions
            # carry the chain id we read once (Wallet), so the check adds nothing.
            w3.middleware_onion.remove("validation")
        self.w3 = w3
        self.rollup = contract(self.w3, "ResultRollup", Web3.to_checksum_address(rollup))
        self.registry = contract(self.w3, "ModelRegistry", Web3.to_checksum_address(registry))
        if not stake_manager:
            stake_manager = self.registry.functions.stake_manager().call()
        self.stake_manager = contract(self.w3, "StakeManager", Web3.to_checksum_address(stake_manager))
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        return self._chain_id

    def models(self) -> list[ModelInfo]:
        reg = self.registry.functions
        out = []
        for model_id in range(1, reg.model_count().call() + 1):
            root, num_ops, price, active = reg.get_model(model_id).call()
            out.append(ModelInfo(model_id, reg.model_name(model_id).call(), bytes(root), num_ops, price, active))
        return out

    def nodes(self) -> list[NodeRecord]:
        reg = self.registry.functions
        out = []
        for i in range(reg.node_count().call()):
            address = reg.node_list(i).call()
            endpoint, model_ids, staked = reg.get_node(address).call()
            stake = self.stake_manager.functions.stake(address).call()
            out.append(NodeRecord(address, endpoint, tuple(model_ids), staked, stake))
        return out

    def node_active(self, address: str) -> bool:
        return self.stake_manager.functions.is_active(address).call()

    def node_slashable(self, address: str) -> bool:
        """Stake a lost game would take (active or unbonding): its leaves can still be punished."""
        return self.stake_manager.functions.slashable(address).call() > 0

    def model_active(self, model_id: int) -> bool:
        return self.registry.functions.model_active(model_id).call()

    def leaf_status(self, batch_id: int, index: int, block="latest") -> str:
        return LEAF_STATUS[self.rollup.functions.leaf_status(batch_id, index).call(block_identifier=block)]

    def batch(self, batch_id: int, block="latest") -> dict:
        """The batch as the chain holds it at `block` (a number: `confirmations` below the head)."""
        root, data_hash, count, deadline, poster, finalized = self.rollup.functions.batch(batch_id).call(
            block_identifier=block)
        return {"root": bytes(root), "data_hash": bytes(data_hash), "leaf_count": count, "deadline": deadline,
                "poster": poster, "finalized": finalized}

    def timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]
