"""DISHONEST NODE BEHAVIOURS — for tests and the demo only.

Nothing in the normal CLI reaches this module: `opinfer node run` always
runs the honest node. A dishonest node is started from code
(`dishonest_node(...)` / `run_dishonest(...)`) or with
`python -m node.dishonest BEHAVIOUR [opinfer node run flags]`.

Each behaviour is a defender Strategy (the trace the node commits to and
how it answers moves) plus, where the lie is in the signed result, a Node
whose commit() signs that trace's output:

- wrong-output:    the final output is wrong (one element of the last tensor);
- deep-element:    one element deep in the trace is wrong and every later op
                   is recomputed from it, so the output looks plausible;
- inconsistent:    a correct output, defended with a bisection answer that
                   contradicts the node's own trace (and so its later moves);
- silent:          a wrong output and never any answer in a dispute;
- late:            a wrong output, answered only after the node's clock ran out.

Every one of them ends with the node slashed (tests/node/test_dishonest.py)."""

from __future__ import annotations

import sys

import numpy as np

from node.app import Node
from node.defender import Strategy
from opinfer.semantics.jobinput import JobInput
from opinfer.semantics.program import Program
from opinfer.trace import player
from opinfer.trace.outputs import parse_generation
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, patched_trace


class WrongOutput(Strategy):
    name, honest = "wrong-output", False

    def __init__(self, delta: int = 1):
        self.delta = delta

    def trace(self, program: Program, job: JobInput) -> Trace:
        honest = Trace.of(program, job)
        return patched_trace(honest, honest.n, 0, 0, self.delta)


class DeepElement(Strategy):
    """One wrong element in tensor `position` (default: the middle of the
    trace), every later op recomputed from it."""

    name, honest = "deep-element", False

    def __init__(self, position: int | None = None, row: int = 0, col: int = 3, delta: int = 40):
        self.position, self.row, self.col, self.delta = position, row, col, delta

    def trace(self, program: Program, job: JobInput) -> Trace:
        n = program.job_ops(job)
        honest_root = None
        # A liar wants another output: move on while the wrong element washes out
        # (a requantisation that saturates) until the output root differs.
        for position in ([self.position] if self.position else range(max(1, n // 2), n)):
            for col in range(self.col, self.col + 8):
                trace = corrupted_trace(program, job, position, self.row, col, self.delta)
                if honest_root is None:
                    honest_root = Trace.of(program, job).output_root
                if trace.output_root != honest_root or self.position:
                    return trace
        return trace


class Inconsistent(Strategy):
    """Correct output; its first bisection claims a wrong intermediate root,
    after which it answers from its honest trace (contradicting that claim)."""

    name, honest = "inconsistent", False

    def __init__(self):
        self.lied: set[int] = set()

    def move(self, gid, g, trace, honest, now):
        if honest.function == "bisect" and gid not in self.lied:
            self.lied.add(gid)
            claims = list(honest.args[1])
            claims[0] = bytes(b ^ 0xFF for b in bytes(claims[0]))
            return player.Move("bisect", (gid, claims))
        return honest


class Silent(WrongOutput):
    name = "silent"

    def move(self, gid, g, trace, honest, now):
        return None


class Late(WrongOutput):
    """Answers only once its clock has run out (the contract refuses the move)."""

    name = "late"

    def move(self, gid, g, trace, honest, now):
        return honest if now - g["last_move_at"] > g["node_clock"] else None


BEHAVIOURS = {cls.name: cls for cls in (WrongOutput, DeepElement, Inconsistent, Silent, Late)}


class DishonestNode(Node):
    """A Node that signs the output of its strategy's trace."""

    strategy: Strategy

    def commit(self, name, job, output, payload):
        if self.strategy.honest or isinstance(self.strategy, Inconsistent):
            return output, payload
        out = np.asarray(self.strategy.trace(self.program(name), job).output)
        # Serve what it signs, so that the coordinator (which checks that the
        # output root commits to the returned output) posts the lie.
        values = [int(v) for v in out.reshape(-1)]
        if "embedding" in payload:
            payload = {**payload, "embedding": values}
        elif "ids" in payload:
            ids, reason = parse_generation(out)
            payload = {**payload, "ids": ids, "finish_reason": reason}
        elif "output" in payload:
            payload = {**payload, "output": values}
        return out, {**payload, "dishonest": self.strategy.name}


def dishonest_node(strategy: Strategy):
    """A Node factory (node/service.run's node_factory) for `strategy`."""

    def factory(*args, **kwargs):
        node = DishonestNode(*args, **kwargs)
        node.strategy = strategy
        return node

    return factory


def run_dishonest(behaviour: str, settings, model_refs: list[str], engines: dict | None = None) -> int:
    from node import service

    strategy = BEHAVIOURS[behaviour]()
    return service.run(settings, model_refs, engines, strategy=strategy, node_factory=dishonest_node(strategy))


def main(argv: list[str]) -> int:
    import argparse

    from node.cli import add_arguments, settings_from

    if not argv or argv[0] not in BEHAVIOURS:
        print(f"usage: python -m node.dishonest {{{','.join(BEHAVIOURS)}}} [opinfer node run flags]", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"node.dishonest {argv[0]}")
    add_arguments(parser.add_subparsers(dest="action", required=True))
    args = parser.parse_args(["run", *argv[1:]])
    from opinfer.errors import OpinferError

    try:
        return run_dishonest(argv[0], settings_from(args), args.models)
    except OpinferError as exc:   # e.g. slashed: its stake is below the minimum (as `opinfer node run` says it)
        print(f"node.dishonest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
