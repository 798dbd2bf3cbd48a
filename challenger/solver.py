"""Pure decisions of the challenger: is a leaf wrong, and what to do next
in a game. No I/O: the service feeds in what it read from the chain and its
own re-execution; opinfer.trace.player picks the bisection move itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from eth_abi import encode

from opinfer.semantics import merkle
from opinfer.trace import player
from opinfer.trace.state import Trace

OK = "ok"
WRONG_OUTPUT = "output-root"   # re-execution gives another output root
WRONG_INPUT = "input-root"     # the signed input root is not the input's (the contract settles it at once)
OUT_OF_LIMITS = "job-limits"   # the node signed a job outside the model's committed limits (settled at once too)
DISPUTABLE = (WRONG_OUTPUT, WRONG_INPUT, OUT_OF_LIMITS)


def verdict(leaf_input_root: bytes, leaf_output_root: bytes, input_root: bytes, output_root: bytes) -> str:
    if leaf_input_root != input_root:
        return WRONG_INPUT
    if leaf_output_root != output_root:
        return WRONG_OUTPUT
    return OK


@dataclass(frozen=True)
class Action:
    kind: str                      # MOVE, TIMEOUT, WAIT, OVER or OUT_OF_TIME
    move: player.Move | None = None
    outcome: str | None = None     # for OVER: won, lost or void


MOVE, TIMEOUT, WAIT, OVER, OUT_OF_TIME = "move", "timeout", "wait", "over", "out-of-time"
OUTCOMES = {player.NODE_WON: "lost", player.CHALLENGER_WON: "won", player.VOID: "void"}


def decide(gid: int, g: dict, now: int, trace: Callable[[], Trace], arity: int, arity_bits: int,
           revealed: list) -> Action:
    """The challenger's next action in game `gid` at chain time `now`.

    `trace` is called only when a move needs it (building one costs seconds
    to minutes; a game waiting on the node must not pay that)."""
    if g["status"] != player.ACTIVE:
        return Action(OVER, outcome=OUTCOMES.get(g["status"], "void"))
    elapsed = now - g["last_move_at"]
    if g["phase"] in player.NODE_PHASES:
        # The contract wants strictly more than the clock; the next block is later than `now`.
        if elapsed > g["node_clock"]:
            return Action(TIMEOUT, player.Move("claim_timeout", (gid,)))
        return Action(WAIT)
    if elapsed > g["challenger_clock"]:
        return Action(OUT_OF_TIME)
    return Action(MOVE, player.challenger_move(gid, g, trace(), arity, arity_bits, revealed))


def revealed_matches(g: dict, revealed: list) -> bool:
    """Whether `revealed` is what the node committed to for the current
    phase (the game stores only its hash), so a cached copy can be trusted."""
    if not revealed:
        return False
    try:
        if g["phase"] in (player.PICK, player.CHOOSE):
            return merkle.keccak(encode(["bytes32[]"], [[bytes(v) for v in revealed]])) == g["pending"]
        if g["phase"] == player.ELEMENT:
            return merkle.keccak(encode(["int256[16]"], [[int(v) for v in revealed]])) == g["subtree"]
    except Exception:  # noqa: BLE001 - a malformed cache entry simply does not match
        return False
    return False
