"""The fault suite's parts: client traffic that records what the API
answered, a seeded plan of SIGKILLs (and restarts) of the devnet's
processes and of chain reorganisations (anvil_reorg, 1 to 5 blocks deep,
each aimed at a block holding a batch posting, a finalize, a challenge or a
game move), and an audit of the chain (batches decoded from calldata, leaf
statuses, games, stakes) that says what was posted, finalized and proven.

Loopback only: every process is the devnet's own (tests/faults/conftest.py)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from opinfer.chain import reorg
from opinfer.chain.client import ProtocolClient
from opinfer.trace import player
from opinfer.trace.tables import LEAF_FINAL, LEAF_INVALID, LeafStatus

EMBED = "all-minilm-l6-v2"
CHAT = "smollm2-135m-instruct"
NO_CACHE = {"cache": False}
WORDS = ("rollup", "stake", "window", "bisection", "leaf", "batch", "proof", "node", "chain", "trace", "tensor",
         "signature", "finality", "verifier", "coordinator", "challenger", "element", "model", "embedding", "root")


def log_tails(logs: Path, lines: int = 40, firsts: int = 20) -> str:
    """The last lines of each service log, after the first lines of each kind of error or
    warning it logged (a tail alone often shows only the last symptom, repeated)."""
    out = []
    for path in sorted(Path(logs).glob("*.log")):
        all_lines = path.read_text(errors="replace").splitlines()
        seen, first = set(), []
        for line in all_lines:
            if '"level": "error"' in line or '"level": "warning"' in line or "Traceback" in line:
                kind = line.split('"msg": ')[-1].split('",')[0]   # the message, not its fields
                if kind not in seen:
                    seen.add(kind)
                    first.append(line[:400])
        text = all_lines[-lines:]
        out.append(f"----- {path.name}: first of each warning/error ({len(first[:firsts])})\n" + "\n".join(first[:firsts])
                   + f"\n----- {path.name} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(out)


# --------------------------------------------------------------------------- traffic


@dataclass
class Answered:
    job_id: str          # 32 hex digits, no 0x
    node: str
    kind: str
    at: float


class Traffic:
    """Worker threads sending uncached requests; every job id answered with 200 is recorded.

    The router prefers the faster honest nodes; while the liar has answered
    fewer than `liar_target` jobs, a burst of concurrent requests every few
    seconds fills the honest nodes' slots so that some reach it. One steady
    embedding worker: with more, every request beside another one in flight
    goes to the liar while an honest node restarts, and each lie is a game
    (a dozen games take minutes to play out)."""

    def __init__(self, api_url: str, api_key: str, seed: int, liar: str, embed_workers: int = 1,
                 chat_every_s: float = 15.0, pause_s: float = 0.15, liar_target: int = 2, burst: int = 10):
        self.api = api_url.rstrip("/")
        self.headers = {"authorization": f"Bearer {api_key}"}
        self.seed = seed
        self.liar = liar.lower()
        self.embed_workers = embed_workers
        self.chat_every_s = chat_every_s
        self.pause_s = pause_s
        self.liar_target, self.burst = liar_target, burst
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered: dict[str, Answered] = {}
        self.reanswered: list[str] = []       # job ids the API gave twice (uncached requests: must stay empty)
        self.failed: Counter = Counter()      # reason -> requests
        self.sent = 0
        self.bursts = 0
        self.counter = itertools.count()
        self.threads: list[threading.Thread] = []

    def start(self) -> "Traffic":
        for i in range(self.embed_workers):
            self.threads.append(threading.Thread(target=self._worker, args=("embedding", i), daemon=True))
        self.threads.append(threading.Thread(target=self._worker, args=("chat", 0), daemon=True))
        self.threads.append(threading.Thread(target=self._bursts, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def finish(self, timeout: float = 150.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    @property
    def liar_answered(self) -> int:
        with self.lock:
            return sum(a.node.lower() == self.liar for a in self.answered.values())

    def _worker(self, kind: str, index: int) -> None:
        rng = random.Random(f"{self.seed}-{kind}-{index}")
        with httpx.Client(headers=self.headers, timeout=httpx.Timeout(120.0, connect=5.0)) as http:
            if kind == "chat":
                self.stop.wait(rng.uniform(2, 6))
            while not self.stop.is_set():
                ok = self.request(http, kind, rng)
                self.stop.wait((self.chat_every_s if kind == "chat" else rng.uniform(0, 2 * self.pause_s))
                               if ok else 0.5)

    def _bursts(self) -> None:
        rng = random.Random(f"{self.seed}-burst")
        while not self.stop.wait(rng.uniform(4, 8)):
            if self.liar_answered >= self.liar_target:
                continue
            self.bursts += 1
            threads = [threading.Thread(target=self._one, args=(random.Random(rng.random()),), daemon=True)
                       for _ in range(self.burst)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(130)

    def _one(self, rng: random.Random) -> None:
        with httpx.Client(headers=self.headers, timeout=httpx.Timeout(120.0, connect=5.0)) as http:
            self.request(http, "embedding", rng)

    def request(self, http: httpx.Client, kind: str, rng: random.Random) -> bool:
        n = next(self.counter)
        text = f"fault suite {self.seed} request {n}: " + " ".join(rng.choice(WORDS) for _ in range(6))
        if kind == "chat":
            path, body = "/chat/completions", {"model": CHAT, "max_tokens": 3, "temperature": 0,
                                               "messages": [{"role": "user", "content": text}], "opinfer": NO_CACHE}
        else:
            path, body = "/embeddings", {"model": EMBED, "input": text, "opinfer": NO_CACHE}
        with self.lock:
            self.sent += 1
        try:
            r = http.post(self.api + path, json=body)
        except httpx.HTTPError as exc:
            self._fail(type(exc).__name__)
            return False
        if r.status_code != 200:
            self._fail(f"http {r.status_code}")
            return False
        data = r.json()
        ids = [i.strip().removeprefix("0x").lower() for i in r.headers["x-opinfer-job-id"].split(",")]
        nodes = [d["opinfer"]["node"] for d in data["data"]] if kind == "embedding" else [data["opinfer"]["node"]]
        with self.lock:
            for job_id, node in zip(ids, nodes, strict=True):
                if job_id in self.answered:
                    self.reanswered.append(job_id)
                self.answered[job_id] = Answered(job_id, node, kind, time.time())
        return True

    def _fail(self, reason: str) -> None:
        with self.lock:
            self.failed[reason] += 1


# --------------------------------------------------------------------------- chain audit


@dataclass
class PostedLeaf:
    batch_id: int
    index: int
    job_id: str
    node: str
    model_id: int


class ChainView:
    """The protocol's contracts, read through the protocol client (the chain is the source of truth)."""

    def __init__(self, info: dict):
        self.client = ProtocolClient.connect(info["rpc_url"], info["contracts"]["ResultRollup"])
        self.w3 = self.client.w3
        self.rollup, self.game, self.stake = self.client.rollup, self.client.game_contract, self.client.stake_manager
        self._batches: dict[int, list[PostedLeaf]] = {}
        self._scanned = -1
        self._scanned_hash = b""

    def batches(self) -> dict[int, list[PostedLeaf]]:
        """Every posted batch on the canonical chain, rebuilt from its transaction's calldata and checked
        against its event's root (all read again when the last block read is no longer canonical)."""
        head = self.client.head()
        if self._scanned >= 0 and self.client.block_hash(self._scanned) != self._scanned_hash:
            self._batches, self._scanned = {}, -1
        if head > self._scanned:
            for e in self.client.batch_events(self._scanned + 1, head):
                batch = self.client.event_batch(e)
                assert len(batch.leaves) == e.leaf_count
                self._batches[e.batch_id] = [PostedLeaf(e.batch_id, i, leaf.job_id.hex(), leaf.node, leaf.model_id)
                                             for i, leaf in enumerate(batch.leaves)]
            self._scanned, self._scanned_hash = head, self.client.block_hash(head)
        return self._batches

    def batch_count(self) -> int:
        return self.client.batch_count()

    def finalized(self, batch_id: int) -> bool:
        return self.client.batch(batch_id).finalized

    def leaf_status(self, batch_id: int, index: int) -> int:
        return self.client.leaf_status(batch_id, index)

    def games(self) -> list:
        return [self.client.game(g) for g in range(1, self.client.game_count() + 1)]

    def active_games(self) -> int:
        return sum(g.active for g in self.games())

    def events(self, contract, name: str) -> list:
        return list(getattr(contract.events, name)().get_logs(from_block=0, to_block="latest"))

    def newest_block_with(self, kind: str, within: int) -> int | None:
        """The newest of the last `within` blocks that holds an event of `kind`
        (posting, finalize, challenge, move), or None."""
        head = self.w3.eth.block_number
        lo = max(0, head - within + 1)
        found = [e["blockNumber"] for contract, name in REORG_EVENTS[kind]
                 for e in getattr(contract(self).events, name)().get_logs(from_block=lo, to_block=head)]
        return max(found) if found else None


# Which events make a block worth reorganising away, per reorganisation target.
GAME_MOVES = ("TraceOpened", "Bisected", "Picked", "TensorRevealed", "Descended", "Chosen", "ChunkRevealed",
              "ElementPicked", "StepExecuted", "GameResolved")
REORG_EVENTS = {
    "posting": [(lambda v: v.rollup, "BatchPosted")],
    "finalize": [(lambda v: v.rollup, "BatchFinalized")],
    "challenge": [(lambda v: v.game, "GameStarted")],
    "move": [(lambda v: v.game, name) for name in GAME_MOVES],
}


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    target: str          # coordinator | node | liar | challenger | all | reorg
    trigger: str         # any | posting | game | peers-up; for a reorg: posting | finalize | challenge | move
    gap_s: float         # wait before looking for the trigger
    down_s: float        # how long the process stays dead
    service: str = ""    # the devnet service killed
    fired: str = ""      # the trigger actually met ("timeout" when it was not)
    at: float = 0.0
    depth: int = 0       # a reorg: the planned depth (blocks), then the one injected
    dropped_txs: int = 0  # a reorg: transactions in the blocks it replaced


def plan(rng: random.Random, honest: list[str]) -> list[Fault]:
    """9 to 12 kills: at least two of each process kind (one coordinator kill
    while a batch is being posted, one challenger and one liar kill while a
    game runs) and, last, one of every client of anvil at once (only the chain survives)."""
    kinds = ["coordinator", "coordinator", "node", "node", "liar", "liar", "challenger", "challenger"]
    kinds += [rng.choice(("coordinator", "node", "liar")) for _ in range(rng.randint(0, 3))]   # the challenger:
    # twice and in `all`, 30 s apart at least (see Injector.challenger_gap_s)
    rng.shuffle(kinds)
    # Every client of anvil at once comes last: nodes load their models before they
    # listen again (tens of seconds here), so the traffic would mostly fail after it.
    kinds.append("all")
    faults = [Fault(k, "any", rng.uniform(1.5, 5.0), rng.uniform(0.3, 3.0)) for k in kinds]
    for target, trigger in (("coordinator", "posting"), ("challenger", "game"), ("liar", "game")):
        rng.choice([f for f in faults if f.target == target and f.trigger == "any"]).trigger = trigger
    if len([f for f in faults if f.target == "coordinator"]) > 2:
        rng.choice([f for f in faults if f.target == "coordinator" and f.trigger == "any"]).trigger = "posting"
    for f in faults:
        if f.target == "node":
            # One honest node at a time: kill one only once both serve again (a restarted
            # node is back after loading its models; with both down only the liar serves).
            f.service, f.trigger = rng.choice(honest), "peers-up"
    # Reorganisations next to the kills, 1 to 5 blocks deep, one aimed at each kind of
    # transaction the services rely on. A challenge lands in the newest blocks only just after
    # a lie is posted and the game's moves follow it for a while, so those two come first and
    # wait for the first game; postings come early (one a second); finalizations after the
    # window: last before `all` (that one waits for the first finalize).
    depths = {kind: rng.randint(1, 5) for kind in ("challenge", "move", "posting", "finalize")}
    n = len(faults) - 1          # `all` stays last
    faults.insert(0, Fault("reorg", "challenge", rng.uniform(1.0, 3.0), 0.0, depth=depths["challenge"]))
    faults.insert(1, Fault("reorg", "move", rng.uniform(0.5, 2.0), 0.0, depth=depths["move"]))
    faults.insert(rng.randint(2, 2 + n // 3), Fault("reorg", "posting", rng.uniform(1.0, 3.0), 0.0,
                                                    depth=depths["posting"]))
    faults.insert(len(faults) - 1, Fault("reorg", "finalize", rng.uniform(1.0, 3.0), 0.0, depth=depths["finalize"]))
    return faults


class Injector:
    """Runs a fault plan against the devnet's Service objects: SIGKILL to the
    process group, a pause, the same command started again (same state)."""

    def __init__(self, services: dict, faults: list[Fault], chain: ChainView, coordinator_db: Path, liar: str,
                 honest_urls: list[str], trigger_timeout: float = 30.0, deadline_s: float = 120.0,
                 challenger_gap_s: float = 0.0, liar_slashed=lambda: False, log=print,
                 reorg_timeout: float = 30.0):
        self.services, self.faults, self.chain = services, faults, chain
        # A slashed node refuses to start (no stake): the liar, killed after it lost a game,
        # exits when it comes back. Not a failure, and nothing left to kill.
        self.liar_slashed = liar_slashed
        self.liar_gone = 0
        # The protocol needs one honest challenger able to act within each window: a
        # challenger restart costs 15-30 s here, so two kills of it come this far apart.
        self.challenger_gap_s = challenger_gap_s
        self.last_challenger_kill = -1e9
        self.honest_urls = honest_urls
        self.coordinator_db, self.liar = coordinator_db, liar
        self.trigger_timeout = trigger_timeout
        self.reorg_timeout = reorg_timeout   # how long a reorg waits for a block holding its target
        self.deadline_s = deadline_s      # no kill starts later than this (s after start)
        self.log = log
        self.done = threading.Event()
        self.halted = threading.Event()   # the test is over (failed): kill nothing, start nothing
        self.error: BaseException | None = None
        self.injected: list[Fault] = []
        self.killed = 0                   # processes: an `all` fault kills every service
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> "Injector":
        self.t0 = time.monotonic()
        self.thread.start()
        return self

    def counts(self) -> Counter:
        return Counter(f.target for f in self.injected)

    def _run(self) -> None:
        try:
            for fault in self.faults:
                if self.halted.wait(fault.gap_s):
                    return
                if fault.target in ("challenger", "all"):
                    self.halted.wait(max(0.0, self.last_challenger_kill + self.challenger_gap_s - time.monotonic()))
                if time.monotonic() - self.t0 > self.deadline_s and fault.target not in ("all", "reorg"):
                    self.log(f"  fault {fault.target}: dropped (past the deadline)")
                    continue
                if fault.target == "reorg":
                    self.reorganise(fault)
                    continue
                fault.fired = self._wait_trigger(fault.trigger)
                if self.halted.is_set():
                    return
                self.kill_restart(fault)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.done.set()

    def _wait_trigger(self, trigger: str) -> str:
        if trigger == "any":
            return "any"
        wait = self.trigger_timeout * (2.5 if trigger == "peers-up" else 1)   # a node reloads its models
        deadline = min(time.monotonic() + wait, max(self.t0 + self.deadline_s, time.monotonic() + 1))
        while time.monotonic() < deadline and not self.halted.is_set():
            try:
                if trigger == "posting" and self._batch_in_flight():
                    return "posting"
                if trigger == "game" and self.chain.active_games() > 0:
                    return "game"
                if trigger == "peers-up" and all(httpx.get(u + "/healthz", timeout=2).status_code == 200
                                                 for u in self.honest_urls):
                    return "peers-up"
            except (sqlite3.Error, OSError, ValueError, httpx.HTTPError):
                pass
            time.sleep(0.02 if trigger == "posting" else 0.5)
        return "timeout"

    def _batch_in_flight(self) -> bool:
        """A batch signed and recorded (prepared) or sent, its receipt not yet recorded."""
        if not self.coordinator_db.exists():
            return False
        con = sqlite3.connect(f"file:{self.coordinator_db}?mode=ro", uri=True, timeout=0.5)
        try:
            return con.execute("select count(*) from batches where state in ('prepared', 'sent')").fetchone()[0] > 0
        finally:
            con.close()

    def kill_restart(self, fault: Fault) -> None:
        if fault.target == "all":
            names = list(self.services)
            random.Random(fault.gap_s).shuffle(names)
        else:
            names = [fault.service or {"coordinator": "coordinator", "challenger": "challenger",
                                       "liar": self.liar}[fault.target]]
        fault.service = "+".join(names) if fault.target != "all" else "all"
        for name in list(names):   # died on its own: that is a failure to report, not a fault to inject
            svc = self.services[name]
            if not svc.alive():
                if name == self.liar and self.liar_slashed():
                    names.remove(name)
                    self.liar_gone += 1
                    self.log(f"  {name} (the liar) exited after it was slashed: not restarted, not killed")
                    continue
                raise AssertionError(f"{name} was not running before fault {len(self.injected) + 1} "
                                     f"(exit code {svc.proc.returncode}; log {svc.log})")
        if not names:
            return
        fault.at = time.monotonic() - self.t0
        if "challenger" in names:
            self.last_challenger_kill = time.monotonic()
        for name in names:
            kill(self.services[name])
        self.killed += len(names)
        self.injected.append(fault)
        self.log(f"  fault {len(self.injected):2d} t={fault.at:5.1f}s kill -9 {fault.service:<11} "
                 f"(trigger {fault.trigger}: {fault.fired}), down {fault.down_s:.1f}s")
        self.halted.wait(fault.down_s)
        for name in names:        # restarted even when halted: the fixture's teardown stops what runs
            self.services[name].start()

    def reorganise(self, fault: Fault) -> None:
        """Wait (bounded) until one of the last 5 blocks holds the fault's target, then replace
        the newest blocks down to it (at least the planned depth, at most 5) with empty ones:
        their transactions are gone, and every service must notice and re-derive."""
        # A challenge or a move waits for the first game (a burst must reach the liar first),
        # a finalize for the end of the first window (up to the plan's deadline); a posting briefly.
        wait = {"challenge": 60.0, "move": 45.0, "finalize": self.deadline_s}.get(fault.trigger, self.reorg_timeout)
        deadline = min(time.monotonic() + wait, max(self.t0 + self.deadline_s, time.monotonic() + 1))
        depth, fault.fired = fault.depth, "timeout"
        while time.monotonic() < deadline and not self.halted.is_set():
            try:
                block = self.chain.newest_block_with(fault.trigger, 5)
                head = self.chain.w3.eth.block_number
            except (OSError, ValueError, httpx.HTTPError):
                block = None
            if block is not None and head - block + 1 <= 5:
                depth, fault.fired = max(fault.depth, head - block + 1), fault.trigger
                break
            time.sleep(0.05)
        if self.halted.is_set():
            return
        w3 = self.chain.w3
        head = w3.eth.block_number
        depth = min(depth, head)
        fault.dropped_txs = sum(len(w3.eth.get_block(n)["transactions"]) for n in range(head - depth + 1, head + 1))
        reorg.anvil_reorg(w3, depth)
        fault.depth, fault.service = depth, f"reorg-{fault.trigger}"
        fault.at = time.monotonic() - self.t0
        self.injected.append(fault)
        self.log(f"  fault {len(self.injected):2d} t={fault.at:5.1f}s reorg {depth} block(s) "
                 f"(target {fault.trigger}: {fault.fired}), {fault.dropped_txs} transactions dropped")

    def halt(self, timeout: float = 15.0) -> None:
        self.halted.set()
        self.thread.join(timeout)


def kill(svc) -> None:
    try:
        os.killpg(svc.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    svc.proc.wait(10)


# --------------------------------------------------------------------------- outcome


@dataclass
class Outcome:
    seed: int
    faults: Counter
    fault_log: list[Fault]
    killed: int
    answered: dict[str, Answered]
    reanswered: list[str]
    failed: Counter
    posted: dict[str, list[PostedLeaf]]              # job id -> where it was posted
    batches: dict[int, list[PostedLeaf]]
    finalized: dict[int, bool]
    leaf_status: dict[tuple[int, int], int]
    games: list[dict]
    rejected_after_slash: set[str]                   # answered by the liar, refused by the rollup once it was slashed
    coordinator_view: dict[str, dict] = field(default_factory=dict)
    stakes: dict[str, int] = field(default_factory=dict)
    slashed: set[str] = field(default_factory=set)
    bonds_awarded: int = 0
    locked_bond: int = 0
    liar_answered: int = 0
    liar_gone: int = 0           # liar kills skipped: it had exited (slashed nodes refuse to start)
    reposted: int = 0            # leaves the coordinator posted again after a reorg dropped their batch
    batches_reposted: int = 0
    wall_s: float = 0.0
    settle_s: float = 0.0

    @property
    def lost(self) -> set[str]:
        return {j for j in self.answered if j not in self.posted} - self.rejected_after_slash

    @property
    def duplicated(self) -> set[str]:
        return {j for j, where in self.posted.items() if len(where) > 1}

    @property
    def false_statuses(self) -> dict[str, tuple]:
        """Answered jobs whose API status or place differs from the chain's: job id -> (api, chain)."""
        name = {s: s.label for s in LeafStatus if s}
        out = {}
        for job_id, view in self.coordinator_view.items():
            if job_id in self.rejected_after_slash:
                continue
            where = self.posted.get(job_id) or []
            chain = [(name.get(self.leaf_status.get((w.batch_id, w.index))), w.batch_id, w.index) for w in where]
            api = (view.get("status"), view.get("batch_id"), view.get("leaf_index"))
            if chain != [api]:
                out[job_id] = (api, chain)
        return out

    @property
    def reorgs(self) -> list[Fault]:
        return [f for f in self.fault_log if f.target == "reorg"]

    def batch_verdicts(self) -> tuple[int, int, int]:
        """(final, invalid, unsettled): a batch is invalid when one of its leaves is."""
        final = invalid = unsettled = 0
        for bid, leaves in self.batches.items():
            statuses = [self.leaf_status.get((bid, leaf.index)) for leaf in leaves]
            if not self.finalized.get(bid) or any(s not in (LEAF_FINAL, LEAF_INVALID) for s in statuses):
                unsettled += 1
            elif LEAF_INVALID in statuses:
                invalid += 1
            else:
                final += 1
        return final, invalid, unsettled

    def summary(self) -> str:
        f = self.faults
        final, invalid, unsettled = self.batch_verdicts()
        won = sum(g["status"] == player.CHALLENGER_WON for g in self.games)
        kinds = Counter(a.kind for a in self.answered.values())
        reorgs = ", ".join(f"{r.trigger}:{r.depth}{'' if r.fired == r.trigger else '(missed)'}"
                           for r in self.reorgs)
        return (f"faults: injected={sum(f.values())} (coordinator={f['coordinator']} node={f['node']} "
                f"liar={f['liar']} challenger={f['challenger']} all={f['all']} reorg={f['reorg']}; "
                f"{self.killed} processes killed"
                f"{f'; liar exited once slashed, {self.liar_gone} kills skipped' if self.liar_gone else ''}) "
                f"jobs answered={len(self.answered)} (embedding={kinds['embedding']} chat={kinds['chat']} "
                f"liar={self.liar_answered}) "
                f"failed={sum(self.failed.values())} posted={len(set(self.answered) & set(self.posted))} "
                f"lost={len(self.lost)} duplicated={len(self.duplicated)} "
                f"false_statuses={len(self.false_statuses)} "
                f"reorgs injected={len(self.reorgs)} [{reorgs}] "
                f"transactions dropped={sum(r.dropped_txs for r in self.reorgs)} "
                f"jobs re-posted={self.reposted} (in {self.batches_reposted} batches) "
                f"rejected_after_slash={len(self.rejected_after_slash)} batches={len(self.batches)} final={final} "
                f"invalid={invalid} unsettled={unsettled} games={len(self.games)} won_by_challenger={won} "
                f"seed={self.seed} wall={self.wall_s:.0f}s")


def group_posted(batches: dict[int, list[PostedLeaf]]) -> dict[str, list[PostedLeaf]]:
    out: dict[str, list[PostedLeaf]] = defaultdict(list)
    for leaves in batches.values():
        for leaf in leaves:
            out[leaf.job_id].append(leaf)
    return dict(out)


# --------------------------------------------------------------------------- diagnosis


def diagnose(outcome: Outcome, chain: ChainView, state: Path, logs: Path) -> str:
    """What each side believed about what did not settle: for a batch never finalized, the
    coordinator's rows for it and its log lines; for a game still open, its state against
    chain time and the challenger's record and log lines. Printed when a run ends unsettled."""
    out = []
    now = chain.w3.eth.get_block("latest")["timestamp"]
    stuck = sorted({bid for bid, done in outcome.finalized.items() if not done}
                   | {b for (b, _), s in outcome.leaf_status.items() if s not in (LEAF_FINAL, LEAF_INVALID)})
    if stuck:
        con = sqlite3.connect(f"file:{state / 'coordinator.db'}?mode=ro", uri=True, timeout=5)
        try:
            cols = ("id", "chain_batch_id", "state", "nonce", "block_number", "deadline", "finalize_nonce",
                    "finalize_block", "reposts", "error")
            for bid in stuck:
                jobs = [leaf.job_id for leaf in outcome.batches.get(bid, [])]
                rows = con.execute(f"select {', '.join(cols)} from batches where chain_batch_id = ? or id in "
                                   f"(select batch_pk from leaves where job_id in ({', '.join('?' * len(jobs))}))",
                                   [bid, *jobs]).fetchall()
                out.append(f"chain batch {bid}: finalized={outcome.finalized.get(bid)} now={now}; "
                           f"coordinator rows: {[dict(zip(cols, r)) for r in rows]}")
        except sqlite3.Error as exc:
            out.append(f"coordinator.db: {exc}")
        finally:
            con.close()
        text = (logs / "coordinator.log").read_text(errors="replace").splitlines()
        keys = [f"#{bid} " for bid in stuck] + [f"#{bid})" for bid in stuck] + ["reorganised", "finalize"]
        out += ["coordinator.log: " + line[:300] for line in text if any(k in line for k in keys)][-40:]
    for g in outcome.games:
        if g["status"] != player.ACTIVE:
            continue
        out.append(f"game over batch {g['batch_id']} leaf {g['leaf_index']} still active at chain time {now}: "
                   f"phase={g['phase']!r} last_move_at={g['last_move_at']} (+{now - g['last_move_at']} s) "
                   f"node_clock={g['node_clock']} challenger_clock={g['challenger_clock']}")
        try:
            con = sqlite3.connect(f"file:{state / 'challenger.db'}?mode=ro", uri=True, timeout=5)
            rows = con.execute("select status, game_id, start_block, reason from disputes where batch_id = ? "
                               "and leaf_index = ?", (g["batch_id"], g["leaf_index"])).fetchall()
            con.close()
            out.append(f"challenger dispute rows: {rows}")
        except sqlite3.Error as exc:
            out.append(f"challenger.db: {exc}")
        text = (logs / "challenger.log").read_text(errors="replace").splitlines()
        marks = (f'"batch": {g["batch_id"]},', '"game":', "trace", "clock", "dispute", "challenge")
        out += ["challenger.log: " + line[:300] for line in text if any(k in line for k in marks)][-40:]
    return "\n".join(out)
