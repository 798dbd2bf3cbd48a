"""Pure bisection logic shared by the node (defender) and the challenger.

No I/O: given positions and claims, say where the dissection points lie and
which part, child or element an honest player disputes. Contracts mirror
`dissection_points` in DisputeGame.pick.
"""

from __future__ import annotations

from opinfer.errors import CommitmentError


def dissection_points(lo: int, hi: int, arity: int) -> list[int]:
    """Inner points p_1..p_{n-1} of (lo, hi) with n = min(arity, hi - lo)."""
    if hi - lo < 2:
        raise CommitmentError(f"interval ({lo}, {hi}) cannot be split")
    parts = min(arity, hi - lo)
    return [lo + (hi - lo) * j // parts for j in range(1, parts)]


def part_bounds(lo: int, hi: int, parts: int, part: int) -> tuple[int, int]:
    return lo + (hi - lo) * part // parts, lo + (hi - lo) * (part + 1) // parts


def first_disagreement(theirs: list, ours: list) -> int:
    """Index of the first claim that differs from ours.

    The last entry stands for the interval's end, which both sides already
    disagree on, so there always is one."""
    if len(theirs) != len(ours):
        raise CommitmentError("claim lists of different lengths")
    for i, (a, b) in enumerate(zip(theirs, ours)):
        if a != b:
            return i
    raise CommitmentError("no disagreement: the claims match our trace")


def descent_levels(level: int, depth: int, arity_bits: int) -> int:
    """Tree levels one phase-2 round descends."""
    return min(arity_bits, depth - level)
