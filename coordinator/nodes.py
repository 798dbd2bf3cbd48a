"""The pool of nodes: who they are (registry + static list), how they are
doing (health checks, request outcomes) and how to call them.

State lives in memory (routing.NodeHealth) and is written to the `nodes`
table on each refresh, so operators can see it and a restart keeps the
ejections."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable

import aiohttp
import httpx
import orjson
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
        self.timeout_s, self.connect_timeout_s = timeout, connect_timeout
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)   # health checks
        self.rng = rng or random.Random()
        self.nodes: dict[str, routing.NodeHealth] = {}
        self._lock = threading.Lock()
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

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

    def _session(self) -> aiohttp.ClientSession:
        # One session per event loop (keep-alive connections belong to a loop);
        # sessions of loops that have closed are dropped. aiohttp rather than
        # httpx on this path: about half a millisecond less per request.
        loop = asyncio.get_running_loop()
        for other in [lp for lp in self._sessions if lp.is_closed()]:
            # its loop is gone, so nothing can be awaited: mark it closed (no socket
            # survives a closed loop) so that it is not reported as leaked
            self._sessions.pop(other).connector._close()
        session = self._sessions.get(loop)
        if session is None:
            session = self._sessions[loop] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=self.connect_timeout_s),
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=64), raise_for_status=False)
        return session

    async def _post(self, url: str, data: bytes, headers: dict) -> tuple[int, bytes]:
        """(status, body) of one POST; TimeoutError or aiohttp.ClientError when it fails."""
        async with self._session().post(url, data=data, headers=headers) as resp:
            return resp.status, await resp.read()

    async def execute(self, node: routing.NodeHealth, body: dict) -> dict:
        """POST /v1/execute on `node`; NodeFailure on any kind of failure."""
        node.inflight += 1
        started = time.perf_counter()
        try:
            data = orjson.dumps(body)
            headers = {"content-type": "application/json"}
            if self.signer:
                headers.update(self.signer.headers(data))
            status, raw = await self._post(f"{node.endpoint}/v1/execute", data, headers)
        except TimeoutError:
            raise NodeFailure(node.address, "timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise NodeFailure(node.address, f"unreachable: {type(exc).__name__}") from None
        finally:
            node.inflight -= 1
        if status >= 500:
            raise NodeFailure(node.address, f"http {status}")
        if status >= 400:
            raise NodeFailure(node.address, f"refused: {raw[:200].decode(errors='replace')}", fault=False)
        try:
            answer = orjson.loads(raw)
            if not isinstance(answer, dict):
                raise ValueError
        except ValueError:
            raise NodeFailure(node.address, "bad answer: not a JSON object") from None
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
            reason = f"health: {type(exc).__name__}"
            if self.clock() < node.ejected_until:
                # Already out of rotation: a probe that finds it still down is not a further
                # failure (each would double the ejection: a node down 40 s for a restart
                # stayed out 32 x eject_for after it was back). Its one try when the time is up is.
                with self._lock:
                    node.last_error = reason
                return False
            self.failure(node, reason)
            return False
        if node.source == "static" and isinstance(info.get("models"), dict):
            node.model_ids = frozenset(int(v) for v in info["models"].values())
        if node.latency_ms is None:
            node.latency_ms = (time.perf_counter() - started) * 1000
        # A passing check does not end an ejection: a node that answers
        # /healthz but fails jobs must wait out its time, then get one try.
        return True

    async def aclose(self) -> None:
        """Close this loop's session (others belong to loops that cannot run it)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
