"""The protocol's contracts found from the rollup's address alone (its stake
manager, registry and dispute game), as the services' chain adapters use them."""

from __future__ import annotations

from web3 import Web3

from opinfer.chain.deploy import contract
from opinfer.chain.game import GameClient
from opinfer.chain.reorg import canonical_hash
from opinfer.chain.sender import TxSender


class ProtocolChain:
    def __init__(self, w3: Web3, sender: TxSender, rollup: str):
        self.w3, self.sender = w3, sender
        self.rollup = contract(w3, "ResultRollup", Web3.to_checksum_address(rollup))
        f = self.rollup.functions
        self.stake_manager = contract(w3, "StakeManager", f.stake_manager().call())
        self.registry = contract(w3, "ModelRegistry", f.registry().call())
        self.game_contract = contract(w3, "DisputeGame", f.dispute_game().call())
        self.games = GameClient(self.game_contract, sender)
        self.arity, self.arity_bits = self.games.arity, self.games.arity_bits
        self.chain_id = w3.eth.chain_id

    @property
    def address(self) -> str:
        return self.sender.address

    def block_hash(self, number: int) -> bytes | None:
        """The canonical hash of block `number` (None past the head): reorganisation checks."""
        return canonical_hash(self.w3)(number)
