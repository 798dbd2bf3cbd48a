"""Prometheus metrics of one challenger, on a registry of its own (passed
in, never the process-global one, so tests and several instances in one
process do not collide), and a tiny HTTP server for GET /metrics."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NS = "opinfer_challenger"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.batches_seen = Counter("batches_seen", "BatchPosted events handled", namespace=NS, registry=r)
        self.batches_expired = Counter("batches_expired", "Batches first seen after their challenge window closed",
                                       namespace=NS, registry=r)
        self.batches_unavailable = Counter(
            "batches_unavailable", "Batches posted by a contract that the RPC cannot trace: their leaves go unchecked "
            "(alert: use an RPC with debug_traceTransaction)", namespace=NS, registry=r)
        self.leaves_seen = Counter("leaves_seen", "Leaves in handled batches", namespace=NS, registry=r)
        self.leaves_checked = Counter("leaves_checked", "Leaves re-executed and compared", ["model"],
                                      namespace=NS, registry=r)
        self.leaves_unverifiable = Counter("leaves_unverifiable", "Leaves that could not be re-executed", ["reason"],
                                           namespace=NS, registry=r)
        self.mismatches = Counter("mismatches", "Leaves whose output root differs from ours", namespace=NS,
                                  registry=r)
        self.disputes_opened = Counter("disputes_opened", "Games started", namespace=NS, registry=r)
        self.disputes_won = Counter("disputes_won", "Games won", namespace=NS, registry=r)
        self.disputes_lost = Counter("disputes_lost", "Games lost", namespace=NS, registry=r)
        self.disputes_void = Counter("disputes_void", "Games voided (leaf proven invalid by another game)",
                                     namespace=NS, registry=r)
        self.disputes_expired = Counter("disputes_expired", "Wrong leaves found too late to challenge",
                                        namespace=NS, registry=r)
        self.moves = Counter("moves", "Game moves sent", ["function"], namespace=NS, registry=r)
        self.games_active = Gauge("games_active", "Games in progress", namespace=NS, registry=r)
        self.lag_blocks = Gauge("lag_blocks", "Blocks between the chain head and the scan cursor", namespace=NS,
                                registry=r)
        self.lag_seconds = Gauge("lag_seconds", "Seconds between the head block and the cursor block", namespace=NS,
                                 registry=r)
        self.cursor = Gauge("cursor_block", "Last block fully scanned", namespace=NS, registry=r)
        self.rewards_claimed = Counter("rewards_claimed_wei", "Wei claimed from the StakeManager", namespace=NS,
                                       registry=r)
        self.errors = Counter("errors", "Errors by where they happened", ["where"], namespace=NS, registry=r)
        self.rechecks = Counter("rechecks", "Leaves of nodes with a fraud record re-executed beyond the sample, "
                                "by outcome (checked, expired: window too close, over_budget: the node's budget spent)",
                                ["outcome"], namespace=NS, registry=r)
        self.work_queued = Gauge("work_queued", "Re-checks and trace builds waiting for a worker", ["kind"],
                                 namespace=NS, registry=r)
        self.reexec_seconds = Histogram("reexec_seconds", "Re-execution time per leaf", ["model"], namespace=NS,
                                        registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /healthz on a daemon thread."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0):
        render = metrics.render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path.split("?")[0] == "/metrics":
                    body, ctype, code = render(), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    body, ctype, code = b'{"ok": true}', "application/json", 200
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes are not worth a log line
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="challenger-metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
