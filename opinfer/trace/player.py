"""Pure move selection for both sides of a dispute game.

Given the on-chain game state, the player's own trace and what the other
side revealed last, return the contract function to call and its arguments.
No I/O: chain adapters (brownie in tests, web3 in services) send the move.
"""

from __future__ import annotations

from dataclasses import dataclass

from opinfer.errors import CommitmentError
from opinfer.trace import bisection
from opinfer.trace.state import Trace

from opinfer.trace.tables import (ACTIVE, BISECT, CHALLENGER_WON, CHOOSE, CHUNK, DESCEND, ELEMENT,  # noqa: F401
                                  GAME_FIELDS, NODE_PHASES, GameState, NODE_WON, OPEN, PICK, STEP, TENSOR, VOID)


@dataclass(frozen=True)
class Move:
    function: str
    args: tuple


def game_state(raw) -> GameState:
    """The games(id) tuple, typed (opinfer.trace.tables.GameState; reads as a mapping too)."""
    return GameState.from_raw(raw)


def _descendants(trace: Trace, g: dict, arity_bits: int) -> list[bytes]:
    tree = trace.trees[g["hi"]]
    m = bisection.descent_levels(g["level"], g["depth"], arity_bits)
    return [tree.node(g["level"] + m, (g["index"] << m) + j) for j in range(1 << m)]


def node_move(gid: int, g: dict, trace: Trace, arity: int, arity_bits: int) -> Move:
    """The node's honest answer from its own trace."""
    phase = g["phase"]
    if phase == OPEN:
        return Move("open_trace", (gid, trace.state_root(trace.n), trace.state_proof(trace.n, trace.n)))
    if phase == BISECT:
        points = bisection.dissection_points(g["lo"], g["hi"], arity)
        return Move("bisect", (gid, [trace.state_root(p) for p in points]))
    if phase == TENSOR:
        hi = g["hi"]
        return Move("reveal_tensor", (gid, trace.trees[hi].root, trace.state_proof(hi, hi),
                                      trace.program.header(hi - 1)))
    if phase == DESCEND:
        return Move("descend", (gid, _descendants(trace, g, arity_bits)))
    if phase == CHUNK:
        return Move("reveal_chunk", (gid, trace.trees[g["hi"]].chunk(g["index"])))
    raise CommitmentError(f"phase {phase} is not the node's")


def challenger_move(gid: int, g: dict, trace: Trace, arity: int, arity_bits: int, revealed: list) -> Move:
    """The challenger's move: dispute the first thing that differs from its trace.

    `revealed` is what the node's last move published: the bisection claims,
    the descendant hashes or the chunk values."""
    phase = g["phase"]
    if phase == PICK:
        claims = [bytes(c) for c in revealed]
        points = bisection.dissection_points(g["lo"], g["hi"], arity)
        ours = [trace.state_root(p) for p in points] + [trace.state_root(g["hi"])]
        return Move("pick", (gid, claims, bisection.first_disagreement(claims + [g["hi_root"]], ours)))
    if phase == CHOOSE:
        hashes = [bytes(h) for h in revealed]
        return Move("choose", (gid, hashes, bisection.first_disagreement(hashes, _descendants(trace, g, arity_bits))))
    if phase == ELEMENT:
        values = [int(v) for v in revealed]
        ours = trace.trees[g["hi"]].chunk(g["index"])
        return Move("pick_element", (gid, values, bisection.first_disagreement(values, ours)))
    if phase == STEP:
        return step_move(gid, g, trace)
    raise CommitmentError(f"phase {phase} is not the challenger's")


def step_move(gid: int, g: dict, trace: Trace) -> Move:
    op = g["hi"] - 1
    return Move("step", (gid, trace.program.header(op), trace.witness(op, g["row"], g["col"])))


# The event (and field) in which each node move publishes what the challenger needs.
REVEAL_EVENTS = {"bisect": ("Bisected", "claims"), "descend": ("Descended", "hashes"),
                 "reveal_chunk": ("ChunkRevealed", "values")}
