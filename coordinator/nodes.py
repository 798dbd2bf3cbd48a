"""The pool of nodes: who they are (registry + static list), how they are
doing (health checks, request outcomes) and how to call them.

State lives in memory (routing.NodeHealth) and is written to the `nodes`
table on each refresh, so operators can see it and a restart keeps the
ejections.

Any staked node can announce any endpoint on-chain, so every endpoint is
treated as hostile input: only http(s) URLs whose host is a public address
(loopback, link-local, private, multicast, reserved and unspecified
addresses are refused unless `allow_private_endpoints`, a devnet setting, is
on), checked when the endpoint is learnt and again at connect time for host
names (a name can resolve to anything, and again differently later);
redirects are never followed; every read from a node is bounded in size and
time."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver
from sqlalchemy import select

from coordinator import models as m
from coordinator import routing
from coordinator.errors import NodeFailure
from coordinator.metrics import Metrics
from opinfer.signing import RequestSigner

log = logging.getLogger("opinfer.coordinator.nodes")
MAX_ANSWER_BYTES = 256 * 1024    # an execute answer's base bound; a long job gets more (service.answer_bound)
MAX_HEALTH_BYTES = 16 * 1024


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why the coordinator must not connect to `ip` for a node (None: a public address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{kind.replace('_', '-')} address {ip}"
    if not ip.is_global:
        return f"non-global address {ip}"   # shared (100.64/10), benchmarking, documentation ranges
    return None


def endpoint_problem(url: str, allow_private: bool = False) -> str | None:
    """Why an announced endpoint is refused (None: it may be called).

    http or https, a host, no credentials, no query or fragment; an IP
    literal must be public unless allow_private. Host names are checked
    when they are resolved (GuardedResolver)."""
    if len(url) > 256:
        return "endpoint longer than 256 characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"malformed endpoint: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} is not http or https"
    if not parts.hostname:
        return "endpoint has no host"
    if parts.username is not None or parts.password is not None:
        return "endpoint carries credentials"
    if parts.query or parts.fragment:
        return "endpoint has a query or fragment"
    if port == 0:
        return "port 0"
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        if not allow_private and parts.hostname.rstrip(".").lower() in ("localhost", "localhost.localdomain") \
                or parts.hostname.lower().endswith(".localhost"):
            return f"host {parts.hostname} is loopback"
        return None
    return None if allow_private else address_problem(ip)


class GuardedResolver(AbstractResolver):
    """DNS through aiohttp's default resolver, keeping only the addresses a
    node may have: a host name that resolves only to refused addresses fails
    to connect (at connect time, so re-pointing the name later does not help)."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private
        self._inner = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        found = await self._inner.resolve(host, port, family)
        if self.allow_private:
            return found
        kept = [r for r in found if address_problem(ipaddress.ip_address(r["host"])) is None]
        if not kept:
            raise OSError(f"{host} resolves only to refused addresses "
                          f"({', '.join(sorted({r['host'] for r in found}))})")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _run(make_coro):
    """Run a coroutine to the end from blocking code, also when called on a
    thread whose event loop is running (the refresh at startup): in a worker then."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


class TooLarge(Exception):
    pass


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or TooLarge as soon as it passes `limit` bytes (by header or by counting)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise TooLarge(f"answer of {resp.content_length} bytes (limit {limit})")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"answer over {limit} bytes")
    return bytes(body)


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
                 signer_key: str = "", allow_private: bool = False, health_timeout: float = 5.0,
                 max_answer_bytes: int = MAX_ANSWER_BYTES):
        self.clock = clock
        # signs every execute request (nodes trust the coordinator's address)
        self.signer = RequestSigner(signer_key) if signer_key else None
        self.metrics = metrics
        self.eject_after, self.eject_for = eject_after, eject_for
        self.timeout_s, self.connect_timeout_s = timeout, connect_timeout
        self.health_timeout_s = health_timeout
        self.allow_private = allow_private       # devnet only: nodes on 127.0.0.1 and private networks
        self.max_answer_bytes = max_answer_bytes
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
                self._vet(n)
                self.nodes[r.address] = n
                seen.add(r.address)
            for address, endpoint in static:
                if address in seen:
                    continue
                n = self.nodes.get(address) or routing.NodeHealth(address, endpoint, default_models, source="static")
                n.endpoint = endpoint
                self._vet(n)
                self.nodes[address] = n
                seen.add(address)
            for gone in set(self.nodes) - seen:
                del self.nodes[gone]
            self.metrics.nodes_up.set(sum(n.in_rotation(self.clock()) for n in self.nodes.values()))

    def _vet(self, n: routing.NodeHealth) -> None:
        problem = endpoint_problem(n.endpoint, self.allow_private)
        if problem and n.endpoint_problem != problem:
            log.warning("node %s: endpoint %r refused: %s", n.address, n.endpoint[:256], problem)
        n.endpoint_problem = problem
        if problem:
            n.last_error = f"endpoint refused: {problem}"

    def restore(self, session) -> None:
        """Health (latency, errors, ejections) saved by an earlier run."""
        for row in session.scalars(select(m.Node)).all():
            self.nodes.setdefault(row.address, routing.NodeHealth(
                row.address, row.endpoint, frozenset(row.model_ids), int(row.stake_wei), row.staked, row.latency_ms,
                row.error_rate, row.failures, row.ejected_until, source=row.source))
        for n in self.nodes.values():
            self._vet(n)   # rows saved under whatever rule applied then

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
        return [n for n in self.nodes.values() if model_id in n.model_ids and n.staked and not n.endpoint_problem]

    def success(self, node: routing.NodeHealth, latency_ms: float) -> None:
        with self._lock:
            routing.record_success(node, latency_ms, self.clock())
        self.metrics.node_latency.labels(node.address).observe(latency_ms / 1000)

    def failure(self, node: routing.NodeHealth, reason: str) -> None:
        with self._lock:
            ejected = routing.record_failure(node, reason, self.clock(), self.eject_after, self.eject_for)
        self.metrics.node_errors.labels(node.address, reason.split(":")[0][:40]).inc()
        if ejected:
            log.warning("node %s out of rotation until %.0f: %s", node.address, node.ejected_until, reason)

    def eject(self, node: routing.NodeHealth, reason: str) -> None:
        """Out of rotation at once, for the longest ejection (a proven-bad answer, not bad luck)."""
        with self._lock:
            routing.eject(node, reason, self.clock(), self.eject_for)
        self.metrics.node_errors.labels(node.address, reason.split(":")[0][:40]).inc()
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
            session = self._sessions[loop] = self._new_session(self.timeout_s)
        return session

    def _new_session(self, total: float) -> aiohttp.ClientSession:
        # total: the whole exchange, reading the body included (a node that
        # drips its answer a byte at a time is cut off like a silent one)
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout_s),
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=64, resolver=GuardedResolver(self.allow_private)),
            raise_for_status=False)

    async def _post(self, url: str, data: bytes, headers: dict, limit: int | None = None,
                    total_s: float | None = None) -> tuple[int, bytes]:
        """(status, body) of one POST; TimeoutError, aiohttp.ClientError or TooLarge when it fails.
        Redirects are not followed (a node could send the coordinator anywhere). `limit` and
        `total_s` (default max_answer_bytes and the node timeout): a long job with logprobs
        answers more bytes, later, than the bounds sized for a short one."""
        # a plain answer is silent until the job is done: only its total time is bounded
        timeout = None if total_s is None else aiohttp.ClientTimeout(total=total_s,
                                                                      sock_connect=self.connect_timeout_s)
        async with self._session().post(url, data=data, headers=headers, allow_redirects=False,
                                        **({"timeout": timeout} if timeout else {})) as resp:
            if 300 <= resp.status < 400:
                return resp.status, b""
            return resp.status, await read_bounded(resp, limit or self.max_answer_bytes)

    async def execute(self, node: routing.NodeHealth, body: dict, on_token=None, limit: int | None = None,
                      total_s: float | None = None) -> dict:
        """POST /v1/execute on `node`; NodeFailure on any kind of failure.

        With on_token (an async callable), the node is asked to stream
        (docs/protocol.md, "Streaming"): each token event is handed to
        on_token as it arrives, and the answer is the "done" event's body with
        "_streamed": the ids the node streamed (the caller checks them against
        the signed output). A node that answers with plain JSON instead is
        accepted (an older node: "_streamed" is empty). `limit`: the most
        bytes read, streamed or not (default max_answer_bytes; logprobs need
        more: service.answer_bound); `total_s`: the most the answer may take
        (default: the node timeout, ten of them for a stream)."""
        if node.endpoint_problem:
            raise NodeFailure(node.address, f"endpoint refused: {node.endpoint_problem}")
        node.inflight += 1
        started = time.perf_counter()
        streamed: list[int] = []
        try:
            if on_token is not None:
                body = {**body, "stream": True}
            data = orjson.dumps(body)
            headers = {"content-type": "application/json"}
            if self.signer:
                headers.update(self.signer.headers(data, node.address))
            if on_token is None:
                status, raw = await self._post(f"{node.endpoint}/v1/execute", data, headers, limit, total_s)
            else:
                status, raw = await self._post_stream(node, data, headers, on_token, streamed,
                                                      limit or self.max_answer_bytes, total_s or self.timeout_s * 10)
        except TimeoutError:
            raise NodeFailure(node.address, "timeout" + (f" after {len(streamed)} streamed tokens"
                                                         if streamed else "")) from None
        except TooLarge as exc:
            raise NodeFailure(node.address, f"too large: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            where = f" after {len(streamed)} streamed tokens" if streamed else ""
            raise NodeFailure(node.address, f"unreachable: {type(exc).__name__}{where}") from None
        finally:
            node.inflight -= 1
        if 300 <= status < 400:
            raise NodeFailure(node.address, f"redirect: http {status} (redirects are not followed)")
        if status >= 500:
            raise NodeFailure(node.address, f"http {status}")
        if status >= 400:
            raise NodeFailure(node.address, f"refused: {raw[:200].decode(errors='replace')}", fault=False)
        if isinstance(raw, dict):
            answer = raw
        else:
            try:
                answer = orjson.loads(raw)
                if not isinstance(answer, dict):
                    raise ValueError
            except ValueError:
                raise NodeFailure(node.address, "bad answer: not a JSON object") from None
        answer["_latency_ms"] = (time.perf_counter() - started) * 1000
        answer["_streamed"] = streamed
        return answer

    async def _post_stream(self, node: routing.NodeHealth, data: bytes, headers: dict, on_token, streamed: list,
                           limit: int, total_s: float) -> tuple[int, bytes | dict]:
        """(status, the "done" body) of a streamed POST, token events handed to on_token on
        the way. Each read may take up to the node timeout (a node that stops sending is cut
        off); the whole stream, total_s (a node that drips is cut off too). Events are split
        by hand, not with readline(): a "done" line of many logprobs is longer than
        aiohttp's line limit."""
        timeout = aiohttp.ClientTimeout(total=total_s, sock_read=self.timeout_s,
                                        sock_connect=self.connect_timeout_s)
        async with self._session().post(f"{node.endpoint}/v1/execute", data=data, headers=headers,
                                        allow_redirects=False, timeout=timeout) as resp:
            if 300 <= resp.status < 400:
                return resp.status, b""
            if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                return resp.status, await read_bounded(resp, limit)
            buffer, seen = b"", 0
            async for chunk in resp.content.iter_any():
                seen += len(chunk)
                if seen > limit:
                    raise TooLarge(f"stream over {limit} bytes")
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.startswith(b"data:"):
                        continue
                    try:
                        event = orjson.loads(line[5:])
                        kind = event["type"]
                    except (ValueError, KeyError, TypeError):
                        raise NodeFailure(node.address, "bad answer: malformed stream event") from None
                    if kind == "token":
                        try:
                            index, token = int(event["index"]), int(event["id"])
                        except (KeyError, TypeError, ValueError):
                            raise NodeFailure(node.address, "bad answer: malformed token event") from None
                        if index != len(streamed):
                            raise NodeFailure(node.address, f"bad answer: token {index} streamed out of order")
                        streamed.append(token)
                        await on_token(event)
                    elif kind == "done":
                        return 200, event
                    elif kind == "error":
                        error = event.get("error") if isinstance(event.get("error"), dict) else {}
                        raise NodeFailure(node.address, f"node error after {len(streamed)} streamed tokens: "
                                                        f"{str(error.get('message'))[:200]}")
            raise NodeFailure(node.address, f"stream ended after {len(streamed)} tokens without an answer")

    def check(self, node: routing.NodeHealth) -> bool:
        """GET /healthz (blocking; from the refresh job). A static node learns its models here."""
        if node.endpoint_problem:
            return False   # never contacted; update() recorded why
        started = time.perf_counter()
        try:
            status, info = _run(lambda: self._get_health(node.endpoint))
            if status != 200 or not isinstance(info, dict) or \
                    str(info.get("address", node.address)).lower() != node.address.lower():
                raise ValueError(f"http {status} / address {str(info.get('address'))[:42] if isinstance(info, dict) else None}")
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
            node.model_ids = frozenset(int(v) for v in list(info["models"].values())[:64])
        if node.latency_ms is None:
            node.latency_ms = (time.perf_counter() - started) * 1000
        # A passing check does not end an ejection: a node that answers
        # /healthz but fails jobs must wait out its time, then get one try.
        return True

    async def _get_health(self, endpoint: str) -> tuple[int, object]:
        """(status, JSON) of GET /healthz: no redirects, at most MAX_HEALTH_BYTES, health_timeout s."""
        async with self._new_session(self.health_timeout_s) as session:
            async with session.get(f"{endpoint}/healthz", allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    return resp.status, None
                return resp.status, orjson.loads(await read_bounded(resp, MAX_HEALTH_BYTES))

    async def aclose(self) -> None:
        """Close this loop's session (others belong to loops that cannot run it)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
