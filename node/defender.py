"""The defender: plays the node's side of every dispute game against it.

Each tick:
1. scan GameStarted events naming this node, from the persisted cursor to
   the head; store each game with its job input (read from the challenge
   call, else from the batch calldata);
2. traces: every open game's trace is requested as soon as the game is
   seen (at challenge time) and built on worker threads, earliest node
   deadline first (node/../opinfer/workpool.py); a built trace is kept in
   memory (a few) and on disk next to the state file, so neither a restart
   nor many concurrent games make the node rebuild it;
3. play each open game whose trace is ready, earliest deadline first (a
   game never waits behind another game's build), from the chain's state:
   - the node's phase: compute the answer (opinfer.trace.player.node_move), check it against
     every root this node already published in the game (store.claims,
     written before the move is sent), send it;
   - STEP: the node runs the one-step itself (its claim is right, so the
     verifier upholds it) instead of waiting for the challenger;
   - the challenger's phase with its clock run out: claim the timeout;
   - game over: record the outcome (won, lost, void).
Everything is idempotent against the store and the chain: a node killed
anywhere restarts, re-reads its games and answers within its clock.

Clock griefing (issue 14, point 3): a griefer who challenges several long
jobs of the node at once must not win any of them on time. The contract
gives a game opened while k others are open against the node k extra trace
budgets; the defender's part is to start every build at once, in deadline
order, on all its workers, and to move in every ready game while the others
build.

Before both, `follow` checks the hashes of the blocks scanned against the
canonical chain (opinfer.chain.reorg.HeadTracker): after a reorganisation it
forgets the games started above the fork (their ids may name other games
now), scans again from the fork, and re-reads every game it had seen end:
one live again on the canonical chain is played again. Moves are computed
from the chain's game state each time, so a dropped move is simply made
again. The defender scans up to the head, unconfirmed: a game runs on a
clock, and answering early is safe because every answer is re-derived.

What the node commits to is a Strategy: the honest one (here) answers from
Trace.of(program, job); node/dishonest.py holds the test-only liars."""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from node.logs import event
from node.metrics import Metrics
from node.store import LOST, OPEN, OVER, VOID, WON, Game, Store
from opinfer.chain.reorg import DEFAULT_MAX_DEPTH, HeadTracker
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.program import Program
from opinfer.trace import bisection, player
from opinfer.trace.state import Trace
from opinfer.workpool import PENDING, DeadlinePool

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


class TraceNotReady(Exception):
    """The game's trace is still being built: the game waits, the others move."""


class TraceFiles:
    """Built traces on disk, one file per game, next to the defender's state
    file (the node's own directory: as trusted as its SQLite state). The
    program is not written (it is large and the node has it): it is stored
    as a reference and given back on load."""

    def __init__(self, directory: Path | None):
        self.dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def _path(self, gid: int) -> Path:
        return self.dir / f"game-{gid}.trace"

    def save(self, gid: int, trace: Trace, program: Program) -> bool:
        if self.dir is None:
            return False
        tmp = self._path(gid).with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                _Pickler(f, program).dump(trace)
            os.replace(tmp, self._path(gid))   # a kill mid-write leaves no half file behind
            return True
        except (pickle.PicklingError, TypeError, AttributeError):
            tmp.unlink(missing_ok=True)        # e.g. a test liar's trace holds a closure: not kept
            return False

    def load(self, gid: int, program: Program) -> Trace | None:
        if self.dir is None or not self._path(gid).exists():
            return None
        try:
            with open(self._path(gid), "rb") as f:
                return _Unpickler(f, program).load()
        except Exception:  # noqa: BLE001 - a damaged file is rebuilt
            self.drop(gid)
            return None

    def drop(self, gid: int) -> None:
        if self.dir is not None:
            self._path(gid).unlink(missing_ok=True)


class _Pickler(pickle.Pickler):
    def __init__(self, f, program: Program):
        super().__init__(f, protocol=5)
        self.program = program

    def persistent_id(self, obj):
        return "program" if obj is self.program else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, program: Program):
        super().__init__(f)
        self.program = program

    def persistent_load(self, pid):
        if pid != "program":
            raise pickle.UnpicklingError(f"unknown reference {pid!r}")
        return self.program


class Defender:
    def __init__(self, chain, store: Store, programs: Callable[[str], Program], metrics: Metrics,
                 log: logging.Logger, strategy: Strategy = HONEST, start_block: int = 0, log_span: int = 2000,
                 step_self: bool = True, trace_workers: int = 2, traces_kept: int = 8, build_wait_s: float = 2.0,
                 trace_dir: str | Path | None = None, max_reorg_depth: int = DEFAULT_MAX_DEPTH):
        self.chain, self.store, self.programs = chain, store, programs
        self.metrics, self.log, self.strategy = metrics, log, strategy
        self.start_block, self.log_span, self.step_self = start_block, log_span, step_self
        self._traces: OrderedDict[int, Trace] = OrderedDict()
        self.traces_kept = traces_kept          # in memory (a SmolLM2 trace is large); the rest wait on disk
        self.build_wait_s = build_wait_s        # a pass waits this long for builds in flight, then moves on
        self.builds = DeadlinePool(trace_workers, "defender-trace")
        if trace_dir is None and str(store.path) != ":memory:":
            trace_dir = Path(store.path).with_name(Path(store.path).stem + "-traces")
        self.files = TraceFiles(Path(trace_dir) if trace_dir is not None else None)
        self.built = 0                          # traces built (not loaded) by this process
        store.bind(chain.chain_id, chain.rollup.address, chain.address)
        self.tracker = HeadTracker.loads(store.get("blocks"), max_reorg_depth)
        self.reorgs = 0
        self.metrics.games_active.set(len(store.games(OPEN)))

    # ------------------------------------------------------------ loop

    def tick(self) -> None:
        for stage in (self.follow, self.scan, self.play):
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
                self.builds.close()
                return

    def start(self, poll_interval: float = 1.0) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop, poll_interval), name="defender", daemon=True)
        thread.start()
        return thread, stop

    # ------------------------------------------------------------ 0. follow

    def follow(self) -> int | None:
        """Detect a reorganisation of the blocks scanned; roll back above the fork. Returns the fork or None."""
        fork = self.tracker.check(self.chain.block_hash)
        if fork is None:
            return None
        forgotten = self.store.forget_above(fork)
        if self.store.cursor is not None and self.store.cursor > fork:
            self.store.cursor = fork
        for gid in forgotten:   # the id may name another game now: nothing of this one is kept
            for key in [k for k in self._traces if k[0] == gid]:
                self._traces.pop(key, None)
            self.files.drop(gid)   # (builds are keyed by input too: one in flight cannot serve another game)
        reopened = 0
        for game in self.store.games(OVER):
            g = self.chain.game(game.game_id)
            if g["status"] == player.ACTIVE and (g["batch_id"], g["leaf_index"]) == (game.batch_id, game.leaf_index):
                self.store.reopen(game.game_id)
                reopened += 1
        self.store.put("blocks", self.tracker.dumps())
        self.reorgs += 1
        event(self.log, "chain reorganised: re-reading games", logging.WARNING, fork=fork,
              games_forgotten=len(forgotten), games_reopened=reopened)
        return fork

    # ------------------------------------------------------------ 1. scan

    def scan(self) -> None:
        head = self.chain.head()
        cursor = self.store.cursor
        if cursor is None:
            cursor = self.start_block - 1
        while cursor < head:
            hi = min(head, cursor + self.log_span)
            hi_hash = self.chain.block_hash(hi)   # before the logs: a later reorganisation is caught next tick
            for s in self.chain.games_started(cursor + 1, hi):
                if self.store.add_game(s, self.chain.job_input(s)):
                    self.metrics.games_seen.inc()
                    event(self.log, "challenged", logging.WARNING, game=s.game_id, batch=s.batch_id,
                          index=s.leaf_index, challenger=s.challenger, job_id=s.job_id)
            self.store.cursor = cursor = hi
            if hi_hash is not None:
                self.tracker.remember(hi, hi_hash)
                self.store.put("blocks", self.tracker.dumps())

    # ------------------------------------------------------------ 2. play

    def play(self) -> None:
        """Move in every open game whose trace is ready, earliest deadline first;
        request the others' traces; wait up to build_wait_s for builds in flight
        and move in the games they finish."""
        games = self.store.games(OPEN)
        if not games:
            self.metrics.games_active.set(0)
            return
        now = self.chain.timestamp()
        states = {}
        for game in games:
            try:
                states[game.game_id] = self.chain.game(game.game_id)
            except Exception as exc:  # noqa: BLE001 - retried next tick
                self.metrics.defender_errors.labels("move").inc()
                event(self.log, "game state unreadable", logging.ERROR, game=game.game_id, error=repr(exc))
        games = sorted((g for g in games if g.game_id in states), key=lambda g: self.deadline(states[g.game_id]))
        for game in games:   # every build starts now (challenge time), in deadline order
            if states[game.game_id]["status"] == player.ACTIVE:
                self.request(game, states[game.game_id])
        waiting = self._play(games, states, now)
        until = time.monotonic() + self.build_wait_s
        seen = self.builds.completed
        while waiting and time.monotonic() < until:
            seen = self.builds.wait(until - time.monotonic(), since=seen)
            ready = [g for g in waiting if self._ready(g)]
            if not ready:
                if not self.builds.queued:
                    break
                continue
            now = self.chain.timestamp()
            for game in ready:
                states[game.game_id] = self.chain.game(game.game_id)
            waiting = [g for g in waiting if g not in ready] + self._play(ready, states, now)
        self.metrics.games_active.set(len(self.store.games(OPEN)))

    def _play(self, games: list[Game], states: dict, now: int) -> list[Game]:
        """One move in each game that has one to make; the games waiting for a trace."""
        waiting = []
        for game in games:
            try:
                self.act(game, now, states[game.game_id])
            except TraceNotReady:
                waiting.append(game)
            except Exception as exc:  # noqa: BLE001 - retried next tick, well inside the clock
                self.metrics.defender_errors.labels("move").inc()
                event(self.log, "move failed", logging.ERROR, game=game.game_id, error=repr(exc))
        return waiting

    @staticmethod
    def deadline(g: dict) -> int:
        """When the node's clock in this game runs out if it does not move (on
        the challenger's turn: after the challenger's clock too)."""
        if g["phase"] in player.NODE_PHASES:
            return g["last_move_at"] + g["node_clock"]
        return g["last_move_at"] + g["challenger_clock"] + g["node_clock"]

    def _ready(self, game: Game) -> bool:
        try:
            self.trace(game)
            return True
        except TraceNotReady:
            return False
        except Exception:  # noqa: BLE001 - act reports it
            return True

    @staticmethod
    def _key(game: Game) -> tuple[int, bytes]:
        """A trace's key: the game id and the disputed input. After a reorganisation the same id
        can name a game over another leaf, and a build begun for the old one must not serve it."""
        return game.game_id, game.input_root

    def request(self, game: Game, g: dict) -> None:
        """Start building the game's trace unless it is in memory, on disk or in flight."""
        key = self._key(game)
        if key in self._traces or self.builds.busy(key):
            return
        self.builds.submit(key, self.deadline(g), lambda: self._build(game))

    def _program(self, game: Game) -> Program:
        model = self.chain.model(game.model_id)
        name, root = model.name, model.model_root
        program = self.programs(name)
        if program.model_root != root:
            raise RuntimeError(f"our program for {name} has model root 0x{program.model_root.hex()}, "
                               f"the registry holds 0x{root.hex()}")
        return program

    def _build(self, game: Game) -> Trace:
        """On a worker: the trace from disk if a run before a restart built it, else built and saved."""
        program = self._program(game)
        trace = self.files.load(game.game_id, program)
        if trace is not None and trace.input_root == game.input_root:
            self.metrics.traces.labels("loaded").inc()
            return trace
        started = time.monotonic()
        trace = self.strategy.trace(program, JobInput.from_bytes(game.input))
        self.built += 1
        self.metrics.traces.labels("built").inc()
        self.metrics.trace_seconds.observe(time.monotonic() - started)
        if trace.input_root != game.input_root or trace.output_root != game.output_root:
            event(self.log, "our trace does not match the signed leaf", logging.CRITICAL, game=game.game_id,
                  output_root=game.output_root, trace_root=trace.output_root)
        self.files.save(game.game_id, trace, program)
        return trace

    def trace(self, game: Game) -> Trace:
        """The game's trace, or TraceNotReady (its build is requested or running)."""
        gid, key = game.game_id, self._key(game)
        trace = self._traces.get(key)
        if trace is None:
            try:
                trace = self.builds.take(key)
            except KeyError:
                # Evicted from memory (more games than traces_kept): back from disk, else rebuilt.
                self.builds.submit(key, 0, lambda: self._build(game))
                trace = self.builds.take(key)
            if trace is PENDING:
                raise TraceNotReady(gid)
            self._traces[key] = trace
            while len(self._traces) > self.traces_kept:
                self._traces.popitem(last=False)
        self._traces.move_to_end(key)
        return trace

    def act(self, game: Game, now: int, g: dict | None = None) -> None:
        gid = game.game_id
        g = g if g is not None else self.chain.game(gid)
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
        self._traces.pop(self._key(game), None)
        self.builds.forget(self._key(game))
        self.files.drop(game.game_id)
        self.metrics.games.labels(outcome).inc()
        reason = self.chain.resolved_reason(game.game_id, game.start_block)
        event(self.log, "game over", logging.INFO if outcome != LOST else logging.ERROR, game=game.game_id,
              outcome=outcome, reason=reason, batch=game.batch_id, index=game.leaf_index, moves=game.moves)
