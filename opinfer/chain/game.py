"""web3 adapter for the dispute game: send a player's Move, read game state
and what the other side revealed (from the move's event)."""

from __future__ import annotations

from opinfer.chain.sender import TxSender
from opinfer.trace import player


class GameClient:
    def __init__(self, game_contract, sender: TxSender):
        self.game = game_contract
        self.sender = sender
        self.arity = game_contract.functions.arity().call()
        self.arity_bits = game_contract.functions.arity_bits().call()

    def state(self, gid: int) -> dict:
        return player.game_state(self.game.functions.games(gid).call())

    def send(self, move: player.Move) -> tuple[dict, list]:
        """Send `move`; return (receipt, what it revealed or [])."""
        receipt = self.sender.call(getattr(self.game.functions, move.function)(*move.args))
        revealed: list = []
        if move.function in player.REVEAL_EVENTS:
            event, field = player.REVEAL_EVENTS[move.function]
            logs = getattr(self.game.events, event)().process_receipt(receipt)
            revealed = list(logs[0]["args"][field])
        return receipt, revealed
