"""Prometheus metrics of one node, on a registry of its own (several nodes
in one test process do not collide); served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NS = "opinfer_node"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.jobs = Counter("jobs", "Jobs answered, by model and outcome (ok, refused, error, cancelled)",
                            ["model", "outcome"], namespace=NS, registry=r)
        self.job_seconds = Histogram("job_seconds", "Time from request to signed answer", ["model"], namespace=NS,
                                     registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                                          30, 60, 120))
        self.batch_size = Histogram("batch_size", "Jobs per engine pass", ["model"], namespace=NS, registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32))
        self.first_token_seconds = Histogram("first_token_seconds", "Time from request to the first generated token",
                                             ["model"], namespace=NS, registry=r,
                                             buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10))
        self.inflight = Gauge("inflight", "Jobs in progress", namespace=NS, registry=r)
        self.auth_failures = Counter("auth_failures", "Requests refused by authentication", namespace=NS,
                                     registry=r)
        self.games = Counter("games", "Dispute games against this node, by outcome (won, lost, void)", ["outcome"],
                             namespace=NS, registry=r)
        self.games_seen = Counter("games_seen", "Dispute games opened against this node", namespace=NS, registry=r)
        self.games_active = Gauge("games_active", "Dispute games in progress", namespace=NS, registry=r)
        self.moves = Counter("moves", "Game moves sent, by function", ["function"], namespace=NS, registry=r)
        self.move_margin = Histogram("move_clock_left_seconds", "Node clock left when a move was sent",
                                     namespace=NS, registry=r, buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600))
        self.traces = Counter("dispute_traces", "Dispute traces made ready, by how (built, loaded from disk)",
                              ["how"], namespace=NS, registry=r)
        self.trace_seconds = Histogram("dispute_trace_seconds", "Time to build one dispute trace", namespace=NS,
                                       registry=r, buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 240, 480, 960))
        self.defender_errors = Counter("defender_errors", "Defender failures, by stage", ["stage"], namespace=NS,
                                       registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
