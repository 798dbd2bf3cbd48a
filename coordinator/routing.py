"""Node selection and retry policy: pure logic, no I/O (unit-tested alone).

A node's cost is its expected latency, inflated by its recent error rate and
by the work already in flight on it, and deflated by its share of the
largest stake (more stake: more to lose by cheating, so preferred). The
cheapest eligible node is tried first. A node that fails `eject_after`
times in a row leaves the rotation for `eject_for` seconds, doubling with
each further failure (up to 32x); when the time is up it gets one try."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

DEFAULT_LATENCY_MS = 100.0   # a node not measured yet
EWMA = 0.3


@dataclass
class NodeHealth:
    address: str
    endpoint: str
    model_ids: frozenset[int] = frozenset()
    stake_wei: int = 0
    staked: bool = True
    latency_ms: float | None = None
    error_rate: float = 0.0
    failures: int = 0            # consecutive
    ejected_until: float = 0.0
    inflight: int = 0
    last_error: str | None = None
    source: str = "registry"
    endpoint_problem: str | None = None   # why its endpoint may not be called (nodes.endpoint_problem)
    meta: dict = field(default_factory=dict)

    def in_rotation(self, now: float) -> bool:
        return self.staked and not self.endpoint_problem and now >= self.ejected_until


def cost(node: NodeHealth, max_stake: int) -> float:
    latency = node.latency_ms if node.latency_ms is not None else DEFAULT_LATENCY_MS
    stake_share = node.stake_wei / max_stake if max_stake > 0 else 1.0
    return latency * (1.0 + 4.0 * node.error_rate) * (1 + node.inflight) / (0.5 + 0.5 * stake_share)


def rank(nodes: list[NodeHealth], model_id: int, now: float, exclude: set[str] = frozenset()) -> list[NodeHealth]:
    """Eligible nodes for a model, cheapest first."""
    eligible = [n for n in nodes if model_id in n.model_ids and n.address not in exclude and n.in_rotation(now)]
    top = max((n.stake_wei for n in eligible), default=0)
    return sorted(eligible, key=lambda n: (cost(n, top), n.address))


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)] before retry `attempt` (0-based)."""
    return rng.uniform(0.0, min(cap, base * (2 ** attempt)))


def record_success(node: NodeHealth, latency_ms: float, now: float | None = None) -> None:
    node.latency_ms = latency_ms if node.latency_ms is None else (1 - EWMA) * node.latency_ms + EWMA * latency_ms
    node.error_rate *= 1 - EWMA
    if now is not None and now < node.ejected_until:
        return   # a request that was in flight when the node was ejected does not end the ejection
    node.failures = 0
    node.ejected_until = 0.0


def eject(node: NodeHealth, reason: str, now: float, eject_for: float) -> None:
    """Out of rotation for the longest ejection at once (a signature that does
    not recover, a leaf the poster rejected): not a fault a retry fixes."""
    node.error_rate = (1 - EWMA) * node.error_rate + EWMA
    node.failures = max(node.failures + 1, 6)
    node.last_error = reason
    node.ejected_until = now + eject_for * 2 ** 5


def record_failure(node: NodeHealth, reason: str, now: float, eject_after: int, eject_for: float) -> bool:
    """Count a failure; returns True when it takes the node out of rotation."""
    node.error_rate = (1 - EWMA) * node.error_rate + EWMA
    node.failures += 1
    node.last_error = reason
    if node.failures >= eject_after:
        node.ejected_until = now + eject_for * 2 ** min(node.failures - eject_after, 5)
        return True
    return False
