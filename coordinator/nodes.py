"""The pool of nodes: who they are (registry + static list), how they are
doing (health checks, request outcomes) and how to call them.

State lives in memory (routing.NodeHealth) and is written to the `nodes`
table on each refresh, so operators can see it and a restart keeps the
ejections."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable

import httpx
from sqlalchemy import select

from coordinator import models as m
from coordinator import routing
from coordinator.errors import NodeFailure
from coordinator.metrics import Metrics
from opinfer.signing import RequestSigner

log = logging.getLogger("opinfer.coordinator.nodes")


def parse_static(spec: str) -> list[tuple[str, str]]:
    """'0xADDR@http://host:port,...' -> [(address, endpoint)]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        address, _, endpoint = item.partition("@")
        out.append((address, endpoint.rstrip("/")))
    return out


class NodePool:
    def __init__(self, clock: Callable[[], float], metrics: Metrics, eject_after: int = 3, eject_for: float = 30.0,
                 timeout: float = 60.0, connect_timeout: float = 2.0, rng: random.Random | None = None,
                 signer_key: str = ""):
        self.clock = clock
        # signs every execute request (nodes trust the coordinator's address)
        self.signer = RequestSigner(signer_key) if signer_key else None
        self.metrics = metrics
        self.eject_after, self.eject_for = eject_after, eject_for
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.rng = rng or random.Random()
        self.nodes: dict[str, routing.NodeHealth] = {}
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    # ------------------------------------------------------------ membership

    def update(self, records, static: list[tuple[str, str]] = (), default_models: frozenset[int] = frozenset()):
        """Merge the registry's records (chain.NodeRecord) and static nodes; keep health of known ones."""
        seen = set()
        with self._lock:
            for r in records:
                n = self.nodes.get(r.address) or routing.NodeHealth(r.address, r.endpoint)
                n.endpoint, n.model_ids, n.staked, n.stake_wei = r.endpoint.rstrip("/"), frozenset(r.model_ids), \
                    r.staked, r.stake_wei
                n.source = "registry"
                self.nodes[r.address] = n
                seen.add(r.address)
            for address, endpoint in static:
                if address in seen:
                    continue
                n = self.nodes.get(address) or routing.NodeHealth(address, endpoint, default_models, source="static")
                n.endpoint = endpoint
                self.nodes[address] = n
                seen.add(address)
            for gone in set(self.nodes) - seen:
                del self.nodes[gone]
            self.metrics.nodes_up.set(sum(n.in_rotation(self.clock()) for n in self.nodes.values()))

    def restore(self, session) -> None:
        """Health (latency, errors, ejections) saved by an earlier run."""
        for row in session.scalars(select(m.Node)).all():
            self.nodes.setdefault(row.address, routing.NodeHealth(
                row.address, row.endpoint, frozenset(row.model_ids), int(row.stake_wei), row.staked, row.latency_ms,
                row.error_rate, row.failures, row.ejected_until, source=row.source))

    def save(self, session) -> None:
        now = self.clock()
        with self._lock:
            nodes = list(self.nodes.values())
        known = {row.address: row for row in session.scalars(select(m.Node)).all()}
        for n in nodes:
            row = known.pop(n.address, None) or m.Node(address=n.address)
            row.endpoint, row.model_ids, row.stake_wei, row.staked = n.endpoint, sorted(n.model_ids), \
                str(n.stake_wei), n.staked
            row.source, row.latency_ms, row.error_rate, row.failures = n.source, n.latency_ms, n.error_rate, n.failures
            row.ejected_until, row.last_error, row.updated_at = n.ejected_until, n.last_error, now
            session.add(row)
        for stale in known.values():
            session.delete(stale)

    # ------------------------------------------------------------ choice and outcomes

    def rank(self, model_id: int, exclude: set[str] = frozenset()) -> list[routing.NodeHealth]:
        with self._lock:
            return routing.rank(list(self.nodes.values()), model_id, self.clock(), exclude)

    def serving(self, model_id: int) -> list[routing.NodeHealth]:
        return [n for n in self.nodes.values() if model_id in n.model_ids and n.staked]

    def success(self, node: routing.NodeHealth, latency_ms: float) -> None:
        with self._lock:
            routing.record_success(node, latency_ms)
        self.metrics.node_latency.labels(node.address).observe(latency_ms / 1000)

    def failure(self, node: routing.NodeHealth, reason: str) -> None:
        with self._lock:
            ejected = routing.record_failure(node, reason, self.clock(), self.eject_after, self.eject_for)
        self.metrics.node_errors.labels(node.address, reason.split(":")[0][:40]).inc()
        if ejected:
            log.warning("node %s out of rotation until %.0f: %s", node.address, node.ejected_until, reason)

    def backoff(self, attempt: int, base: float, cap: float) -> float:
        return routing.backoff(attempt, base, cap, self.rng)

    # ------------------------------------------------------------ HTTP

    def _client(self) -> httpx.AsyncClient:
        # One client per event loop (keep-alive connections belong to a loop);
        # clients of loops that have closed are dropped.
        loop = asyncio.get_running_loop()
        for other in [lp for lp in self._clients if lp.is_closed()]:
            del self._clients[other]
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.timeout,
                                                             limits=httpx.Limits(max_keepalive_connections=64))
        return client

    async def execute(self, node: routing.NodeHealth, body: dict) -> dict:
        """POST /v1/execute on `node`; NodeFailure on any kind of failure."""
        node.inflight += 1
        started = time.perf_counter()
        try:
            data = json.dumps(body).encode()
            headers = {"content-type": "application/json"}
            if self.signer:
                headers.update(self.signer.headers(data))
            resp = await self._client().post(f"{node.endpoint}/v1/execute", content=data, headers=headers)
        except httpx.TimeoutException:
            raise NodeFailure(node.address, "timeout") from None
        except httpx.HTTPError as exc:
            raise NodeFailure(node.address, f"unreachable: {type(exc).__name__}") from None
        finally:
            node.inflight -= 1
        if resp.status_code >= 500:
            raise NodeFailure(node.address, f"http {resp.status_code}")
        if resp.status_code >= 400:
            raise NodeFailure(node.address, f"refused: {resp.text[:200]}", fault=False)
        try:
            answer = resp.json()
        except ValueError:
            raise NodeFailure(node.address, "bad answer: not JSON") from None
        answer["_latency_ms"] = (time.perf_counter() - started) * 1000
        return answer

    def check(self, node: routing.NodeHealth) -> bool:
        """GET /healthz (blocking; from the refresh job). A static node learns its models here."""
        started = time.perf_counter()
        try:
            resp = httpx.get(f"{node.endpoint}/healthz", timeout=self.timeout)
            info = resp.json()
            if resp.status_code != 200 or info.get("address", node.address).lower() != node.address.lower():
                raise ValueError(f"http {resp.status_code} / address {info.get('address')}")
        except Exception as exc:  # noqa: BLE001 - any failure counts against the node
            self.failure(node, f"health: {type(exc).__name__}")
            return False
        if node.source == "static" and isinstance(info.get("models"), dict):
            node.model_ids = frozenset(int(v) for v in info["models"].values())
        if node.latency_ms is None:
            node.latency_ms = (time.perf_counter() - started) * 1000
        # A passing check does not end an ejection: a node that answers
        # /healthz but fails jobs must wait out its time, then get one try.
        return True

    async def aclose(self) -> None:
        """Close this loop's client (others belong to loops that cannot run it)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
