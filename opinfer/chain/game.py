"""web3 adapter for the dispute game: send a player's Move, read game state
and what the other side revealed (from the move's event)."""

from __future__ import annotations

from opinfer.chain.sender import TxSender
from opinfer.errors import ChainError
from opinfer.trace import player
from opinfer.trace.state import Trace


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


def play(node: GameClient, challenger: GameClient, gid: int, node_trace: Trace, challenger_trace: Trace,
         max_moves: int = 200) -> tuple[dict, list[tuple[str, dict]]]:
    """Play game `gid` to its end, each side answering from its own trace.

    Returns the final state and the (move, receipt) pairs in order. Used by
    tests and benchmarks; the node and challenger services play one side each."""
    revealed: list = []
    moves: list[tuple[str, dict]] = []
    for _ in range(max_moves):
        g = node.state(gid)
        if g["status"] != player.ACTIVE:
            return g, moves
        if g["phase"] in player.NODE_PHASES:
            move = player.node_move(gid, g, node_trace, node.arity, node.arity_bits)
            receipt, revealed = node.send(move)
        else:
            move = player.challenger_move(gid, g, challenger_trace, challenger.arity, challenger.arity_bits, revealed)
            receipt, _ = challenger.send(move)
        moves.append((move.function, receipt))
    raise ChainError(f"game {gid} did not end within {max_moves} moves")
