"""A player per game: reads the game, asks the solver, sends the move.

It holds only caches (the trace, the node's last revealed values); the
store holds what must survive a restart, and the chain holds the truth, so
a player rebuilt after a crash carries on from the on-chain state."""

from __future__ import annotations

import logging
from typing import Callable

from challenger import solver
from challenger.errors import ChallengerError
from challenger.logs import event
from challenger.store import Dispute, Store
from opinfer.trace import player
from opinfer.trace.state import Trace


class GameMoved(ChallengerError):
    """The game id recorded for a dispute names no game of ours over that leaf: a
    reorganisation dropped the challenge (the id may now name another game)."""


class GamePlayer:
    def __init__(self, dispute: Dispute, chain, store: Store, trace: Callable[[], Trace], metrics,
                 log: logging.Logger):
        self.d = dispute
        self.gid = dispute.game_id
        self.chain, self.store, self.metrics, self.log = chain, store, metrics, log
        self._trace_fn = trace
        self._trace: Trace | None = None
        self.revealed = self._from_store(dispute.revealed)

    def trace(self) -> Trace:
        if self._trace is None:
            self._trace = self._trace_fn()
        return self._trace

    def act(self, now: int) -> solver.Action:
        g = self.chain.game(self.gid)
        # Checked on every move, not only when the block tracker sees a reorganisation: the
        # challenge is mined after the newest block scanned, so dropping it alone leaves the
        # scanned blocks as they were.
        if "batch_id" in g and ((g["batch_id"], g["leaf_index"]) != (self.d.batch_id, self.d.leaf_index)
                                or str(g["challenger"]).lower() != self.chain.address.lower()):
            raise GameMoved(f"game {self.gid} is not ours over batch {self.d.batch_id} leaf {self.d.leaf_index}")
        revealed: list = []
        if g["status"] == player.ACTIVE and g["phase"] in (player.PICK, player.CHOOSE, player.ELEMENT):
            revealed = self._revealed(g)
        action = solver.decide(self.gid, g, now, self.trace, self.chain.arity, self.chain.arity_bits, revealed)
        if action.kind in (solver.MOVE, solver.TIMEOUT):
            self.chain.send(action.move)
            self.metrics.moves.labels(action.move.function).inc()
            event(self.log, "move sent", game=self.gid, move=action.move.function, phase=g["phase"],
                  lo=g["lo"], hi=g["hi"], node_clock=g["node_clock"], our_clock=g["challenger_clock"])
        elif action.kind == solver.OUT_OF_TIME:
            event(self.log, "our clock ran out", logging.ERROR, game=self.gid)
        return action

    def _revealed(self, g: dict) -> list:
        if solver.revealed_matches(g, self.revealed):
            return self.revealed
        values = self.chain.revealed(self.gid, g["phase"], self.d.start_block or 0)
        if not solver.revealed_matches(g, values):
            raise ChallengerError(f"game {self.gid}: no revealed values match the game's commitment")
        self.revealed = values
        self.store.set_revealed(self.gid, values)
        return values

    @staticmethod
    def _from_store(raw: list | None) -> list:
        if not raw:
            return []
        return [bytes.fromhex(v) if isinstance(v, str) else int(v) for v in raw]
