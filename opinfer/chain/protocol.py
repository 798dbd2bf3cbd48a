"""The protocol client with a signer: ProtocolClient's typed reads plus
sending (the dispute game's moves through GameClient, any contract call
through the TxSender). The node's and challenger's chain adapters extend it
with their own few calls."""

from __future__ import annotations

from web3 import Web3

from opinfer.chain.client import ProtocolClient
from opinfer.chain.game import GameClient
from opinfer.chain.sender import TxSender
from opinfer.trace import player


class ProtocolChain(ProtocolClient):
    def __init__(self, w3: Web3, sender: TxSender, rollup: str):
        super().__init__(w3, rollup)
        self.sender = sender
        self.games = GameClient(self.game_contract, sender)
        self.arity, self.arity_bits = self.games.arity, self.games.arity_bits

    @classmethod
    def connect(cls, rpc_url: str, key: str, rollup: str, timeout: float = 30.0):
        from opinfer.chain.client import connect

        w3 = connect(rpc_url, timeout)
        return cls(w3, TxSender(w3, key), rollup)

    @property
    def address(self) -> str:
        return self.sender.address

    def send_move(self, move: player.Move) -> tuple[dict, list]:
        """Send a game move; (receipt, what it revealed or [])."""
        return self.games.send(move)
