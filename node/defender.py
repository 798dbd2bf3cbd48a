"""The defender: plays the node's side of every dispute game against it.

Each tick:
1. scan GameStarted events naming this node, from the persisted cursor to
   the head; store each game with its job input (read from the challenge
   call, else from the batch calldata);
2. play each open game from the chain's state:
   - the node's phase: rebuild the job's trace (once per game, cached),
     compute the answer (opinfer.trace.player.node_move), check it against
     every root this node already published in the game (store.claims,
     written before the move is sent), send it;
   - STEP: the node runs the one-step itself (its claim is right, so the
     verifier upholds it) instead of waiting for the challenger;
   - the challenger's phase with its clock run out: claim the timeout;
   - game over: record the outcome (won, lost, void).
Everything is idempotent against the store and the chain: a node killed
anywhere restarts, re-reads its games and answers within its clock.

What the node commits to is a Strategy: the honest one (here) answers from
Trace.of(program, job); node/dishonest.py holds the test-only liars."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable

from node.logs import event
from node.metrics import Metrics
from node.store import LOST, OPEN, VOID, WON, Game, Store
from opinfer.trace import bisection, player
from opinfer.trace.jobinput import JobInput
from opinfer.trace.program import Program, Trace

OUTCOMES = {player.NODE_WON: WON, player.CHALLENGER_WON: LOST, player.VOID: VOID}


class Strategy:
    """The honest node: the trace is the program's, every move is the honest one."""

    name = "honest"
    honest = True

    def trace(self, program: Program, job: JobInput) -> Trace:
        return Trace.of(program, job)

    def move(self, gid: int, g: dict, trace: Trace, honest: player.Move, now: int) -> player.Move | None:
        """The move to send (None: none now)."""
        return honest


HONEST = Strategy()


def claims_of(move: player.Move, g: dict, trace: Trace, arity: int) -> dict[str, str]:
    """The roots a move publishes, keyed by what they commit to."""
    if move.function == "open_trace":
        return {f"S{g['num_ops']}": bytes(move.args[1]).hex()}
    if move.function == "bisect":
        points = bisection.dissection_points(g["lo"], g["hi"], arity)
        return {f"S{p}": bytes(c).hex() for p, c in zip(points, move.args[1])}
    if move.function == "reveal_tensor":
        return {f"T{g['hi']}": bytes(move.args[1]).hex()}
    return {}


class Defender:
    def __init__(self, chain, store: Store, programs: Callable[[str], Program], metrics: Metrics,
                 log: logging.Logger, strategy: Strategy = HONEST, start_block: int = 0, log_span: int = 2000,
                 step_self: bool = True):
        self.chain, self.store, self.programs = chain, store, programs
        self.metrics, self.log, self.strategy = metrics, log, strategy
        self.start_block, self.log_span, self.step_self = start_block, log_span, step_self
        self._traces: OrderedDict[int, Trace] = OrderedDict()
        store.bind(chain.chain_id, chain.rollup.address, chain.address)
        self.metrics.games_active.set(len(store.games(OPEN)))

    # ------------------------------------------------------------ loop

    def tick(self) -> None:
        for stage in (self.scan, self.play):
            try:
                stage()
            except Exception as exc:  # noqa: BLE001 - an RPC hiccup: the stage runs again next tick
                self.metrics.defender_errors.labels(stage.__name__).inc()
                event(self.log, "defender stage failed", logging.ERROR, stage=stage.__name__, error=repr(exc))

    def run(self, stop: threading.Event, poll_interval: float = 1.0) -> None:
        event(self.log, "defender started", node=self.chain.address, cursor=self.store.cursor,
              open_games=len(self.store.games(OPEN)), strategy=self.strategy.name)
        while True:
            self.tick()
            if stop.wait(poll_interval):
                return

    def start(self, poll_interval: float = 1.0) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop, poll_interval), name="defender", daemon=True)
        thread.start()
        return thread, stop

    # ------------------------------------------------------------ 1. scan

    def scan(self) -> None:
        head = self.chain.head()
        cursor = self.store.cursor
        if cursor is None:
            cursor = self.start_block - 1
        while cursor < head:
            hi = min(head, cursor + self.log_span)
            for s in self.chain.games_started(cursor + 1, hi):
                if self.store.add_game(s, self.chain.job_input(s)):
                    self.metrics.games_seen.inc()
                    event(self.log, "challenged", logging.WARNING, game=s.game_id, batch=s.batch_id,
                          index=s.leaf_index, challenger=s.challenger, job_id=s.job_id)
            self.store.cursor = cursor = hi

    # ------------------------------------------------------------ 2. play

    def play(self) -> None:
        games = self.store.games(OPEN)
        now = self.chain.timestamp() if games else 0
        for game in games:
            try:
                self.act(game, now)
            except Exception as exc:  # noqa: BLE001 - retried next tick, well inside the clock
                self.metrics.defender_errors.labels("move").inc()
                event(self.log, "move failed", logging.ERROR, game=game.game_id, error=repr(exc))
        self.metrics.games_active.set(len(self.store.games(OPEN)))

    def trace(self, game: Game) -> Trace:
        trace = self._traces.get(game.game_id)
        if trace is None:
            name, root = self.chain.model(game.model_id)
            program = self.programs(name)
            if program.model_root != root:
                raise RuntimeError(f"our program for {name} has model root 0x{program.model_root.hex()}, "
                                   f"the registry holds 0x{root.hex()}")
            job = JobInput.from_bytes(game.input)
            trace = self.strategy.trace(program, job)
            if trace.input_root != game.input_root or trace.output_root != game.output_root:
                event(self.log, "our trace does not match the signed leaf", logging.CRITICAL, game=game.game_id,
                      output_root=game.output_root, trace_root=trace.output_root)
            self._traces[game.game_id] = trace
            while len(self._traces) > 4:  # SmolLM2 traces are large
                self._traces.popitem(last=False)
        return trace

    def act(self, game: Game, now: int) -> None:
        gid = game.game_id
        g = self.chain.game(gid)
        if g["status"] != player.ACTIVE:
            return self.finish(game, g)
        elapsed = now - g["last_move_at"]
        if g["phase"] in player.NODE_PHASES:
            trace = self.trace(game)
            honest = player.node_move(gid, g, trace, self.chain.arity, self.chain.arity_bits)
            move = self.strategy.move(gid, g, trace, honest, now)
            if move is None:
                return
            if self.strategy.honest:
                self.check_consistent(game, claims_of(move, g, trace, self.chain.arity))
            self.send(game, move, g, clock_left=g["node_clock"] - elapsed)
        elif elapsed > g["challenger_clock"]:
            if self.strategy.honest:
                self.send(game, player.Move("claim_timeout", (gid,)), g, clock_left=g["node_clock"])
        elif g["phase"] == player.STEP and self.step_self and self.strategy.honest:
            self.send(game, player.step_move(gid, g, self.trace(game)), g, clock_left=g["node_clock"])

    def check_consistent(self, game: Game, claims: dict[str, str]) -> None:
        """Refuse a move that contradicts an earlier one; record the new claims before sending."""
        before = self.store.claims(game.game_id)
        clash = {k: (before[k], v) for k, v in claims.items() if k in before and before[k] != v}
        if clash:
            self.metrics.defender_errors.labels("inconsistent").inc()
            raise RuntimeError(f"game {game.game_id}: refusing a move that contradicts earlier claims {clash}")
        self.store.add_claims(game.game_id, claims)

    def send(self, game: Game, move: player.Move, g: dict, clock_left: int) -> None:
        self.chain.send(move)
        self.store.count_move(game.game_id)
        self.metrics.moves.labels(move.function).inc()
        self.metrics.move_margin.observe(max(clock_left, 0))
        event(self.log, "move sent", game=game.game_id, move=move.function, phase=g["phase"], lo=g["lo"],
              hi=g["hi"], clock_left=clock_left)

    def finish(self, game: Game, g: dict) -> None:
        outcome = OUTCOMES.get(g["status"], VOID)
        self.store.finish(game.game_id, outcome)
        self._traces.pop(game.game_id, None)
        self.metrics.games.labels(outcome).inc()
        reason = self.chain.resolved_reason(game.game_id, game.start_block)
        event(self.log, "game over", logging.INFO if outcome != LOST else logging.ERROR, game=game.game_id,
              outcome=outcome, reason=reason, batch=game.batch_id, index=game.leaf_index, moves=game.moves)
