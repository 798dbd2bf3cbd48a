"""Prometheus metrics of one coordinator, in its own registry (passed in,
never global), rendered by GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LAG_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram("opinfer_request_seconds", "HTTP request latency", ["route", "status"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.node_latency = Histogram("opinfer_node_seconds", "Node execute latency", ["node"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.node_errors = Counter("opinfer_node_errors_total", "Failed node attempts", ["node", "reason"],
                                   registry=r)
        self.jobs = Counter("opinfer_jobs_total", "Jobs answered", ["model", "source"], registry=r)
        self.cache = Counter("opinfer_cache_total", "Response cache lookups", ["result"], registry=r)
        self.batch_size = Histogram("opinfer_batch_leaves", "Leaves per posted batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.posting_lag = Histogram("opinfer_posting_lag_seconds", "From answer to batch receipt",
                                     buckets=LAG_BUCKETS, registry=r)
        self.finalization_lag = Histogram("opinfer_finalization_lag_seconds", "From answer to final on chain",
                                          buckets=LAG_BUCKETS, registry=r)
        self.disputes = Counter("opinfer_disputes_total", "Leaf status events seen on chain", ["event"],
                                registry=r)
        self.pending_leaves = Gauge("opinfer_pending_leaves", "Leaves waiting for a batch", registry=r)
        self.reorgs = Counter("opinfer_chain_reorgs_total", "Chain reorganisations detected", registry=r)
        self.reposted_leaves = Counter("opinfer_reposted_leaves_total",
                                       "Leaves posted again after a reorganisation dropped their batch", registry=r)
        self.nodes_up = Gauge("opinfer_nodes_in_rotation", "Nodes in rotation", registry=r)
        self.disagreements = Counter("opinfer_consensus_disagreements_total",
                                     "Consensus jobs whose nodes gave different output roots (GET /v1/disagreements)",
                                     ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
