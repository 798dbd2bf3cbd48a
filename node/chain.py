"""The node's chain adapter: the protocol client (opinfer.chain.protocol:
typed reads, the game's moves) plus the node's own few calls (stake,
announce, unbond). Every address comes from the rollup, so a node needs only
the rollup's address and an RPC URL."""

from __future__ import annotations

from node.errors import NodeError
from opinfer.chain.client import GameStarted
from opinfer.chain.protocol import ProtocolChain
from opinfer.errors import ChainError
from opinfer.trace import player

GameStart = GameStarted   # the name the defender's store and tests know


class NodeChain(ProtocolChain):

    # ------------------------------------------------------------ stake and registry

    def add_stake(self, wei: int) -> None:
        self.sender.call(self.stake_manager.functions.stake_eth(), value=wei)

    def announce(self, endpoint: str, model_ids: list[int]) -> None:
        self.sender.call(self.registry.functions.announce(endpoint, model_ids))

    def retire(self) -> None:
        self.sender.call(self.registry.functions.retire())

    def request_unbond(self, wei: int) -> None:
        self.sender.call(self.stake_manager.functions.request_unbond(wei))

    def withdraw(self) -> None:
        self.sender.call(self.stake_manager.functions.withdraw_stake())

    def model_id(self, ref: str) -> int:
        """An on-chain model id from a name or a decimal id (NodeError when none)."""
        try:
            return self.find_model(ref)
        except ChainError as exc:
            raise NodeError(str(exc)) from None

    # ------------------------------------------------------------ games

    def games_started(self, from_block: int, to_block) -> list[GameStarted]:
        return super().games_started(from_block, to_block, node=self.address)

    def job_input(self, start: GameStarted) -> bytes:
        """The disputed job's input bytes (the challenge call's, else the batch's)."""
        try:
            return self.challenged_input(start)
        except ChainError as exc:
            raise NodeError(f"game {start.game_id}: {exc}") from None

    def send(self, move: player.Move) -> dict:
        receipt, _ = self.send_move(move)
        return receipt


def connect(rpc_url: str, key: str, rollup: str) -> NodeChain:
    return NodeChain.connect(rpc_url, key, rollup)
