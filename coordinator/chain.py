"""The coordinator's view of the chain: the protocol client
(opinfer.chain.client: models and nodes from the registry, batch and leaf
state from the rollup), reads only; posting is poster.py. The one difference:
leaf statuses come back as the API's names ("final"), the words the
coordinator's database and API speak."""

from __future__ import annotations

from web3 import Web3

from opinfer.chain.client import ModelInfo, NodeRecord, ProtocolClient, connect  # noqa: F401 - re-exported
from opinfer.errors import ChainError
from opinfer.trace.tables import LEAF_STATUS_NAMES

LEAF_STATUS = LEAF_STATUS_NAMES   # ResultRollup.leaf_status codes


class Chain(ProtocolClient):
    def __init__(self, rpc_url: str, rollup: str, registry: str, stake_manager: str = "", w3: Web3 | None = None):
        if w3 is None:
            w3 = connect(rpc_url)
            # web3's validation middleware asks the node for eth_chainId before
            # every call and estimate: a second round trip each time, on a path
            # that shares the process with request handling. Our transactions
            # carry the chain id we read once (Wallet), so the check adds nothing.
            w3.middleware_onion.remove("validation")
        super().__init__(w3, rollup, registry or None)
        if stake_manager and Web3.to_checksum_address(stake_manager) != self.stake_manager.address:
            raise ChainError(f"stake manager {stake_manager} is not the one the rollup at {rollup} uses "
                             f"({self.stake_manager.address})")

    def node_active(self, address: str) -> bool:
        return self.is_active(address)

    def node_slashable(self, address: str) -> bool:
        """Stake a lost game would take (active or unbonding): its leaves can still be punished."""
        return self.slashable(address) > 0

    def leaf_status(self, batch_id: int, index: int, block="latest") -> str:
        return super().leaf_status(batch_id, index, block).label
