"""The challenger's monitor loop (op-challenger style).

Each tick (open runs before the scan too: lies found before a restart are
challenged first, within their window):
1. play: one player per open game makes its move (games are on a clock);
2. scan: follow BatchPosted (and Slashed) events from the persisted cursor up
   to head - confirmations; rebuild each batch from calldata, sample leaves,
   re-execute them, record verdicts. With disputes to open or play, a scan
   longer than `scan_slice_s` stops after a batch and goes on next tick (a
   backlog after a restart would otherwise run the clocks out);
3. open: bond and challenge each wrong leaf (after confirming it with the
   full trace against the registry's model root);
4. collect: claim rewards.

Work that can take long never runs in the loop (issue 14, point 12: one
caught lie made the scan re-execute the node's whole backlog, and a trace
build in `open_dispute` stalled every game): a wrong leaf gives its node a
fraud record, and re-checking that node's other leaves still inside their
window, as well as building dispute traces, goes to worker threads
(opinfer/workpool.py), earliest deadline first (a game's clock before a
batch's window, an earlier window first). A dispute waits for its trace,
the other disputes and games do not. What one node can make the challenger
re-execute beyond the sample is bounded: `recheck_budget` leaves among its
batches still inside their window; the rest are counted (metric
`rechecks{outcome="over_budget"}`) and left to the sample.
Every step is idempotent against the store and the chain, so a process
killed anywhere redoes at most the step it was in.

Before all of them, `follow` checks the hashes of the blocks scanned
(opinfer.chain.reorg.HeadTracker) against the canonical chain: after a
reorganisation it forgets the batches posted above the fork (their ids may
now name other batches), moves the cursor back so the range is scanned
again (every leaf the canonical chain holds is checked, whatever its batch
id), and re-reads the game of every dispute left: a game that left the
chain is challenged again, one that is live again is played again."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

from challenger import solver
from challenger.errors import ChallengerError, DataUnavailable, DecodeError, TraceNotReady, Unverifiable
from challenger.executors import Executor
from challenger.game import GameMoved, GamePlayer
from challenger.logs import event
from challenger.metrics import Metrics
from challenger.sampler import Sampler
from challenger.store import (DETECTED, DROPPED, EXPIRED, LOST, OPEN, VOID, WON, BatchRecord, Dispute, Store)
from opinfer.chain.reorg import DEFAULT_MAX_DEPTH, HeadTracker
from opinfer.errors import OpinferError
from opinfer.semantics import merkle
from opinfer.semantics.jobinput import JobInput
from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.outputs import input_root
from opinfer.trace.state import Trace
from opinfer.workpool import PENDING, DeadlinePool

RECHECK_CHUNK = 4   # leaves per re-check job

DONE, EXPIRED_BATCH, UNDECODABLE, UNAVAILABLE = "done", "expired", "undecodable", "unavailable"


class Challenger:
    def __init__(self, chain, store: Store, executors: dict[str, Executor], sampler: Sampler, metrics: Metrics,
                 log: logging.Logger, confirmations: int = 0, start_block: int = 0, log_span: int = 2000,
                 bond_top_up: int = 0, clock: Callable[[], float] = time.monotonic, scan_slice_s: float = 5.0,
                 workers: int = 2, recheck_budget: int = 256, settle_s: float = 2.0,
                 max_reorg_depth: int = DEFAULT_MAX_DEPTH):
        self.chain, self.store, self.executors, self.sampler = chain, store, executors, sampler
        self.metrics, self.log, self.clock = metrics, log, clock
        self.confirmations, self.start_block, self.log_span = confirmations, start_block, log_span
        self.bond_top_up = bond_top_up
        self.scan_slice_s = scan_slice_s   # with disputes to open or play, a scan stops after this long
        self.players: dict[int, GamePlayer] = {}
        self._batches: OrderedDict[int, Batch] = OrderedDict()
        self._traces: OrderedDict[tuple, Trace] = OrderedDict()
        self._batches_lock = threading.Lock()
        self._exec_locks: dict[str, threading.Lock] = {name: threading.Lock() for name in executors}
        self.work = DeadlinePool(workers, "challenger-work")   # re-checks and trace builds
        self.recheck_budget = recheck_budget   # leaves per node, among its batches inside their window
        self._spent: dict[str, dict[int, tuple[int, int]]] = {}   # node -> batch id -> (deadline, leaves)
        self._over_budget_logged: set[str] = set()
        self._requeued = False
        self.settle_s = settle_s   # a tick waits this long for background work, then moves what it finished
        store.bind(chain.chain_id, chain.rollup.address)
        self.tracker = HeadTracker.loads(store.get("blocks"), max_reorg_depth)
        self.reorgs = 0
        self._epoch = 0   # bumped by each rollback: work begun before it stops writing
        for node in store.suspects():
            sampler.mark(node)

    # ------------------------------------------------------------ loop

    def tick(self) -> None:
        # Lies already found are challenged and open games move before the scan, and a long
        # scan yields to them (scan_slice_s): after a restart the scan re-executes a backlog,
        # and what waited behind it ran the challenger's clock or the window out (tests/faults:
        # an honest challenger lost games on time, and challenged a lie it had found too late).
        try:
            self.follow()
        except Exception as exc:  # noqa: BLE001 - acting on a view that may be reorganised: wait a tick
            self.metrics.errors.labels("follow").inc()
            event(self.log, "stage failed", logging.ERROR, stage="follow", error=repr(exc))
            return
        seen = self.work.completed
        if not self._requeued:
            # Re-checks queued before a restart are gone with the process: queue them again
            # (leaves already checked are skipped).
            for node in sorted(self.store.suspects()):
                self._stage(lambda node=node: self.recheck(node))
            self._requeued = True
        for stage in (self.open_disputes, self.play, self.scan, self.open_disputes, self.collect):
            self._stage(stage)
        # Background work (traces, re-checks) that finishes within settle_s is acted on now.
        until = time.monotonic() + self.settle_s
        while time.monotonic() < until:
            if self.work.completed != seen:
                seen = self.work.completed
                for stage in (self.open_disputes, self.play):
                    self._stage(stage)
                continue
            if not self.work.queued:
                break
            self.work.wait(max(until - time.monotonic(), 0), since=seen)
        self.metrics.work_queued.labels("all").set(self.work.queued)

    def _stage(self, stage) -> None:
        try:
            stage()
        except Exception as exc:  # noqa: BLE001
            # An RPC hiccup or one bad record must not stop the service: the
            # stage is idempotent and runs again next tick.
            self.metrics.errors.labels(stage.__name__).inc()
            event(self.log, "stage failed", logging.ERROR, stage=stage.__name__, error=repr(exc))

    def close(self) -> None:
        self.work.close()

    def run(self, stop: threading.Event, poll_interval: float = 2.0, once: bool = False) -> None:
        event(self.log, "challenger started", address=self.chain.address, cursor=self.store.cursor,
              sample_rate=self.sampler.rate, confirmations=self.confirmations)
        while True:
            self.tick()
            if once or stop.wait(poll_interval):
                break
        self.close()

    # ------------------------------------------------------------ 0. follow

    def follow(self) -> int | None:
        """Detect a reorganisation of the blocks scanned; roll back above the fork. Returns the fork or None."""
        fork = self.tracker.check(self.chain.block_hash)
        if fork is None:
            return None
        self.rollback(fork)
        self.store.put("blocks", self.tracker.dumps())
        return fork

    def rollback(self, fork: int) -> None:
        forgotten = self.store.forget_above(fork)
        if self.store.cursor is not None and self.store.cursor > fork:
            self.store.cursor = fork
        # Re-checks in flight hold batches read before the reorganisation: they stop writing
        # (epoch), and what they wrote for batch ids no longer recorded goes.
        self._epoch += 1
        self.store.drop_orphans()
        with self._batches_lock:
            self._batches.clear()
        self.players.clear()
        reopened = 0
        me = self.chain.address.lower()
        for d in self.store.disputes():
            if d.game_id is None:
                continue
            g = self.chain.game(d.game_id)
            ours = (g["batch_id"], g["leaf_index"], str(g["challenger"]).lower()) == (d.batch_id, d.leaf_index, me)
            if not ours:
                self.store.reopen(d.batch_id, d.leaf_index)   # the challenge left the chain: challenge again
                reopened += 1
            elif g["status"] == player.ACTIVE and d.status != OPEN:
                self.store.set_dispute(d.batch_id, d.leaf_index, OPEN)   # its end left the chain: play on
                reopened += 1
        self.reorgs += 1
        event(self.log, "chain reorganised: re-scanning", logging.WARNING, fork=fork, cursor=self.store.cursor,
              batches_forgotten_games=len(forgotten), disputes_reopened=reopened)

    # ------------------------------------------------------------ 1. scan

    def scan(self) -> None:
        head = self.chain.head()
        safe = head - self.confirmations
        cursor = self.store.cursor
        if cursor is None:
            cursor = self.start_block - 1
        started = self.clock()
        while cursor < safe:
            hi = min(safe, cursor + self.log_span)
            # Read before the logs: a reorganisation after this read is caught by the next follow.
            hi_hash = self.chain.block_hash(hi)
            for node in self.chain.slashed_nodes(cursor + 1, hi):
                self.add_suspect(node, "slashed")
            sliced = False
            events = self.chain.batch_events(cursor + 1, hi)
            for i, ev in enumerate(events):
                worked = self.handle_batch(ev)
                if (worked and i + 1 < len(events) and self.clock() - started > self.scan_slice_s
                        and (self.store.disputes(OPEN) or self.store.disputes(DETECTED))):
                    sliced = True   # games move (lies found are opened) now; the range is re-read next tick
                    break
            if sliced:
                break
            # Only now is every batch of the range recorded: a crash before this
            # line re-reads the range and skips handled batches by id.
            self.store.cursor = cursor = hi
            if hi_hash is not None:
                self.tracker.remember(hi, hi_hash)
                self.store.put("blocks", self.tracker.dumps())
        self.metrics.cursor.set(cursor)
        self.metrics.lag_blocks.set(max(head - cursor, 0))
        if cursor >= 0 and head > cursor:
            self.metrics.lag_seconds.set(self.chain.timestamp(head) - self.chain.timestamp(cursor))
        else:
            self.metrics.lag_seconds.set(0)

    def handle_batch(self, ev) -> bool:
        """Record, sample and check one batch; False when it was handled before."""
        known = self.store.batch(ev.batch_id)
        if known and known.status in (DONE, EXPIRED_BATCH, UNDECODABLE, UNAVAILABLE):
            return False
        record = BatchRecord(ev.batch_id, ev.block_number, ev.block_hash, ev.tx_hash, ev.deadline, ev.leaf_count,
                             "scanning")
        self.metrics.batches_seen.inc()
        if ev.deadline <= self.chain.timestamp():
            self.store.add_batch(_with(record, EXPIRED_BATCH))
            self.metrics.batches_expired.inc()
            event(self.log, "batch past its window", logging.WARNING, batch=ev.batch_id, deadline=ev.deadline)
            return True
        self.store.add_batch(record)
        try:
            batch = self.load(record)
        except DataUnavailable as exc:
            # Not the poster's fault as far as we can tell, but nobody checks these leaves: say so loudly.
            self.store.add_batch(_with(record, UNAVAILABLE))
            self.metrics.batches_unavailable.inc()
            event(self.log, "batch data unavailable: its leaves are NOT checked", logging.CRITICAL,
                  batch=ev.batch_id, error=str(exc))
            return True
        except DecodeError as exc:
            self.store.add_batch(_with(record, UNDECODABLE))
            self.metrics.errors.labels("decode").inc()
            event(self.log, "batch does not decode", logging.ERROR, batch=ev.batch_id, error=str(exc))
            return True
        self.metrics.leaves_seen.inc(len(batch.leaves))
        nodes = [leaf.node for leaf in batch.leaves]
        picked = [i for i in range(len(nodes)) if self.sampler.sampled(ev.block_hash, ev.batch_id, i)]
        self.check_leaves(ev.batch_id, batch, picked)
        # Leaves of nodes with a fraud record beyond the sample: re-checked by the workers.
        extra = {}
        for i, node in enumerate(nodes):
            if node.lower() in self.sampler.suspects and i not in picked:
                extra.setdefault(node.lower(), []).append(i)
        for node, indices in extra.items():
            self.queue_recheck(node, ev.batch_id, ev.deadline, indices)
        self.store.add_batch(_with(record, DONE))
        event(self.log, "batch checked", batch=ev.batch_id, leaves=len(batch.leaves), sampled=len(picked),
              block=ev.block_number)
        return True

    def load(self, record) -> Batch:
        with self._batches_lock:
            batch = self._batches.get(record.batch_id)
        if batch is None:
            batch = self.chain.load_batch(record.batch_id, record.tx_hash)
            with self._batches_lock:
                self._batches[record.batch_id] = batch
                while len(self._batches) > 256:
                    self._batches.popitem(last=False)
        return batch

    def check_leaves(self, batch_id: int, batch: Batch, indices: list[int], epoch: int | None = None) -> None:
        done = self.store.checked(batch_id)
        todo = [i for i in dict.fromkeys(indices) if i not in done]
        if not todo:
            return
        new_suspects = []
        for i, verdict in zip(todo, self.check_many([batch.leaves[i] for i in todo])):
            if epoch is not None and epoch != self._epoch:
                return   # a reorganisation since the batch was read: its id may name another batch now
            leaf = batch.leaves[i]
            self.store.add_check(batch_id, i, leaf.node, leaf.model_id, verdict)
            if verdict in solver.DISPUTABLE:
                self.metrics.mismatches.inc()
                event(self.log, "wrong leaf", logging.WARNING, batch=batch_id, index=i, node=leaf.node,
                      reason=verdict, job_id=leaf.job_id)
                self.store.add_dispute(batch_id, i, leaf.node, leaf.model_id, verdict)
                if self.sampler.mark(leaf.node):
                    self.store.add_suspect(leaf.node, f"batch {batch_id} leaf {i}")
                    new_suspects.append(leaf.node)
        for node in new_suspects:
            # A node caught once is checked everywhere, by the workers (never in the scan).
            event(self.log, "node has a fraud record: re-checking its open leaves", node=node,
                  reason=f"batch {batch_id}")
            self.recheck(node)

    def add_suspect(self, node: str, reason: str) -> None:
        if self.sampler.mark(node):
            self.store.add_suspect(node, reason)
            event(self.log, "node has a fraud record: re-checking its open leaves", node=node, reason=reason)
            self.recheck(node)

    def recheck(self, node: str) -> None:
        """Queue every leaf of `node` in handled batches still inside their window."""
        for record in self.store.open_batches(self.chain.timestamp()):
            batch = self.load(record)
            indices = [i for i, leaf in enumerate(batch.leaves) if leaf.node.lower() == node.lower()]
            if indices:
                self.queue_recheck(node, record.batch_id, record.deadline, indices)

    def queue_recheck(self, node: str, batch_id: int, deadline: int, indices: list[int]) -> None:
        """Re-check `indices` of a batch on workers, by the batch's deadline, a few
        leaves per job (so a trace build never waits long behind a re-check)."""
        for k in range(0, len(indices), RECHECK_CHUNK):
            part = indices[k:k + RECHECK_CHUNK]
            key = ("recheck", batch_id, node.lower(), part[0])
            self.work.submit(key, deadline, lambda part=part: self._recheck(node.lower(), batch_id, deadline, part),
                             keep=False)
        self.metrics.work_queued.labels("all").set(self.work.queued)

    def _recheck(self, node: str, batch_id: int, deadline: int, indices: list[int]) -> None:
        """On a worker: re-execute a node's leaves in one batch within the node's budget."""
        try:
            self._recheck_now(node, batch_id, deadline, indices)
        except Exception as exc:  # noqa: BLE001 - the next fraud record or restart queues it again
            self.metrics.errors.labels("recheck").inc()
            event(self.log, "re-check failed", logging.ERROR, node=node, batch=batch_id, error=repr(exc))

    def _recheck_now(self, node: str, batch_id: int, deadline: int, indices: list[int]) -> None:
        epoch = self._epoch
        now = self.chain.timestamp()
        todo = [i for i in indices if i not in self.store.checked(batch_id)]
        if deadline <= now:
            self.metrics.rechecks.labels("expired").inc(len(todo))
            return
        allowed = self._take_budget(node, batch_id, deadline, len(todo), now)
        if allowed < len(todo):
            self.metrics.rechecks.labels("over_budget").inc(len(todo) - allowed)
            if node not in self._over_budget_logged:
                self._over_budget_logged.add(node)
                event(self.log, "re-check budget spent: the node's other leaves are left to the sample",
                      logging.WARNING, node=node, budget=self.recheck_budget)
        if allowed:
            record = self.store.batch(batch_id)
            self.check_leaves(batch_id, self.load(record), todo[:allowed], epoch)
            self.metrics.rechecks.labels("checked").inc(allowed)
        self.metrics.work_queued.labels("all").set(self.work.queued)

    def _take_budget(self, node: str, batch_id: int, deadline: int, want: int, now: int) -> int:
        """Leaves of `node` that may be re-executed now: recheck_budget minus what its
        batches still inside their window have already cost (so it refills as they close)."""
        with self._batches_lock:
            spent = self._spent.setdefault(node, {})
            for b in [b for b, (d, _) in spent.items() if d <= now]:
                del spent[b]
            used = sum(n for _, n in spent.values())
            allowed = max(0, min(want, self.recheck_budget - used))
            d, n = spent.get(batch_id, (deadline, 0))
            spent[batch_id] = (d, n + allowed)
            return allowed

    def check_many(self, leaves: list[ResultLeaf]) -> list[str]:
        """Verdicts for leaves, re-executing those of one model in one batched pass."""
        verdicts: list[str | None] = [None] * len(leaves)
        groups: dict[str, list[tuple[int, JobInput]]] = {}
        for k, leaf in enumerate(leaves):
            try:
                job = JobInput.from_bytes(leaf.input)
            except OpinferError:
                # The contract may or may not call this input malformed: never bet a bond on a guess.
                verdicts[k] = self._unverifiable("malformed-input")
                continue
            if leaf.input_root != input_root(job):
                verdicts[k] = solver.WRONG_INPUT
                continue
            name = self.chain.model(leaf.model_id).name
            if name not in self.executors:
                verdicts[k] = self._unverifiable("unknown-model")
                continue
            groups.setdefault(name, []).append((k, job))
        for name, items in groups.items():
            started = self.clock()
            try:
                with self._exec_locks.setdefault(name, threading.Lock()):   # scan and workers share engines
                    roots = self.executors[name].output_roots([job for _, job in items])
            except Exception as exc:  # noqa: BLE001 - an engine failure is not evidence of fraud
                event(self.log, "re-execution failed", logging.ERROR, model=name, error=repr(exc))
                roots = [exc] * len(items)
            per_leaf = (self.clock() - started) / len(items)
            for (k, job), root in zip(items, roots):
                if isinstance(root, Exception):
                    verdicts[k] = self._refused(leaves[k], name, job,
                                                "job-refused" if isinstance(root, Unverifiable) else "engine-error")
                else:
                    self.metrics.reexec_seconds.labels(name).observe(per_leaf)
                    self.metrics.leaves_checked.labels(name).inc()
                    verdicts[k] = solver.verdict(leaves[k].input_root, leaves[k].output_root,
                                                 leaves[k].input_root, root)
        return verdicts

    def _refused(self, leaf: ResultLeaf, name: str, job: JobInput, reason: str) -> str:
        """A job our engine refuses or fails on: provable when the model's committed limits refuse it too
        (StepVerifier.job_shape, issue 14 point 5: the node that signed it loses inside
        `challenge`, no trace needed); otherwise we cannot judge it and bet no bond."""
        program = self.executors[name].program()
        if program.model_root != self.chain.model(leaf.model_id).model_root:
            return self._unverifiable(reason)
        try:
            program.check_job(job)
        except OpinferError:
            return solver.OUT_OF_LIMITS
        return self._unverifiable(reason)

    def _unverifiable(self, reason: str) -> str:
        self.metrics.leaves_unverifiable.labels(reason).inc()
        return "unverifiable:" + reason

    # ------------------------------------------------------------ 2. open

    def open_disputes(self) -> None:
        for d in self.store.disputes(DETECTED):
            try:
                self.open_dispute(d)
            except TraceNotReady:
                continue   # its trace is building; the others go ahead
            except Exception as exc:  # noqa: BLE001 - retried next tick while the window lasts
                self.metrics.errors.labels("open").inc()
                event(self.log, "could not open dispute", logging.ERROR, batch=d.batch_id, index=d.leaf_index,
                      error=repr(exc))

    def open_dispute(self, d: Dispute) -> None:
        record = self.store.batch(d.batch_id)
        if self.chain.has_challenged(d.batch_id, d.leaf_index):
            # We sent the challenge and died before recording it: adopt the game.
            gid, block = self.chain.find_game(d.batch_id, d.leaf_index, record.block_number)
            self.store.set_dispute(d.batch_id, d.leaf_index, OPEN, gid, block)
            event(self.log, "adopted game", game=gid, batch=d.batch_id, index=d.leaf_index)
            return
        if record.deadline <= self.chain.timestamp():
            self.store.set_dispute(d.batch_id, d.leaf_index, EXPIRED)
            self.metrics.disputes_expired.inc()
            event(self.log, "wrong leaf found too late", logging.ERROR, batch=d.batch_id, index=d.leaf_index)
            return
        batch = self.load(record)
        leaf = batch.leaves[d.leaf_index]
        model = self.chain.model(leaf.model_id)
        program = self.executors[model.name].program()
        if program.model_root != model.model_root:
            self.store.set_dispute(d.batch_id, d.leaf_index, DROPPED)
            event(self.log, "cannot prove: our program is not the registered model", logging.ERROR,
                  model=model.name, ours=program.model_root, registered=model.model_root)
            return
        # A lie found goes before any re-check (which only looks for more): its trace is due now.
        if d.reason == solver.WRONG_OUTPUT and self.trace(leaf, self.chain.timestamp()).output_root == leaf.output_root:
            # The fast engine disagreed but the program (what the contract checks) agrees with the node.
            self.store.set_dispute(d.batch_id, d.leaf_index, DROPPED)
            self.store.add_check(d.batch_id, d.leaf_index, leaf.node, leaf.model_id, solver.OK)
            event(self.log, "engine and program disagree; not disputing", logging.ERROR, batch=d.batch_id,
                  index=d.leaf_index, model=model.name)
            return
        if not self.chain.leaf_signed(batch.records[d.leaf_index]):
            # The node never signed this: nobody to slash, but the result must not finalize.
            self.chain.void_forged(batch, d.batch_id, d.leaf_index)
            self.store.set_dispute(d.batch_id, d.leaf_index, VOID)
            event(self.log, "forged leaf voided", logging.WARNING, batch=d.batch_id, index=d.leaf_index)
            return
        self.ensure_bond()
        gid, block = self.chain.challenge(batch, d.batch_id, d.leaf_index, program.model_header())
        self.store.set_dispute(d.batch_id, d.leaf_index, OPEN, gid, block)
        self.metrics.disputes_opened.inc()
        event(self.log, "dispute opened", game=gid, batch=d.batch_id, index=d.leaf_index, node=leaf.node,
              reason=d.reason)

    def ensure_bond(self) -> None:
        need = self.chain.challenge_bond()
        free = self.chain.free_bond()
        if free >= need:
            return
        if self.bond_top_up <= 0:
            raise ChallengerError(f"free bond {free} wei < challenge bond {need} wei and no --bond-top-up set")
        self.chain.deposit_bond(max(self.bond_top_up, need - free))

    def trace(self, leaf: ResultLeaf, deadline: float) -> Trace:
        """The leaf's full trace, or TraceNotReady while a worker builds it (by `deadline`)."""
        key = (leaf.model_id, merkle.keccak(leaf.input))
        trace = self._traces.get(key)
        if trace is None:
            program = self.executors[self.chain.model(leaf.model_id).name].program()
            self.work.submit(("trace",) + key, deadline, lambda: Trace.of(program, JobInput.from_bytes(leaf.input)))
            trace = self.work.take(("trace",) + key)
            if trace is PENDING:
                raise TraceNotReady(f"trace of job 0x{leaf.job_id.hex()} is being built")
            self._traces[key] = trace
            while len(self._traces) > 8:  # a SmolLM2 trace is large: keep a few
                self._traces.popitem(last=False)
        self._traces.move_to_end(key)
        return trace

    # ------------------------------------------------------------ 3. play

    def play(self) -> None:
        now = self.chain.timestamp()
        open_disputes = self.store.disputes(OPEN)
        for d in open_disputes:
            p = self.players.get(d.game_id)
            if p is None:
                leaf = self.load(self.store.batch(d.batch_id)).leaves[d.leaf_index]
                # A game's clock runs now: its trace comes before any batch's (deadline `now`).
                p = self.players[d.game_id] = GamePlayer(d, self.chain, self.store,
                                                         lambda leaf=leaf: self.trace(leaf, now),
                                                         self.metrics, self.log)
            try:
                action = p.act(now)
            except TraceNotReady:
                continue
            except GameMoved as exc:   # the challenge left the chain: challenge again (open_disputes)
                self.players.pop(d.game_id, None)
                self.store.reopen(d.batch_id, d.leaf_index)
                event(self.log, "our challenge left the chain: challenging again", logging.WARNING,
                      batch=d.batch_id, index=d.leaf_index, error=str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - retried next tick, well inside the clock
                self.metrics.errors.labels("play").inc()
                event(self.log, "move failed", logging.ERROR, game=d.game_id, error=repr(exc))
                continue
            if action.kind == solver.OVER:
                self.finish(d, action.outcome)
        self.metrics.games_active.set(len(self.store.disputes(OPEN)))

    def finish(self, d: Dispute, outcome: str) -> None:
        status = {"won": WON, "lost": LOST}.get(outcome, VOID)
        self.store.set_dispute(d.batch_id, d.leaf_index, status)
        {WON: self.metrics.disputes_won, LOST: self.metrics.disputes_lost, VOID: self.metrics.disputes_void}[
            status].inc()
        self.players.pop(d.game_id, None)
        event(self.log, "game over", logging.INFO if status != LOST else logging.ERROR, game=d.game_id,
              outcome=status, batch=d.batch_id, index=d.leaf_index, node=d.node)

    # ------------------------------------------------------------ 4. collect

    def collect(self) -> None:
        amount = self.chain.claim()
        if amount:
            self.metrics.rewards_claimed.inc(amount)
            event(self.log, "reward claimed", wei=amount)


def _with(record: BatchRecord, status: str) -> BatchRecord:
    return BatchRecord(record.batch_id, record.block_number, record.block_hash, record.tx_hash, record.deadline,
                       record.leaf_count, status)
