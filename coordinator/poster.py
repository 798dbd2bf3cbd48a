"""Batch posting with crash safety: every answered leaf is posted exactly once.

The steps, each a point where the process may die:

1. prepare: in one DB transaction, pick pending leaves, sign the
   post_batch transaction with an explicit nonce, record the batch (state
   `prepared`, raw tx, tx hash, nonce) and assign its leaves.  -- before_send
2. broadcast the raw transaction.                                 -- after_send
3. record state `sent`, wait for the receipt (and `confirmations` blocks
   on top of it).                                     -- before_receipt_recorded
4. record the receipt: `posted` with the chain's batch id and deadline
   (or `failed` when it reverted: the leaves go back to pending).

On every run (and so on restart) unfinished batches are reconciled first:
a receipt for the recorded hash settles the batch; otherwise, while the
nonce is still unused, the same signed bytes are broadcast again (the same
hash: it cannot be mined twice); once the nonce is used by another
transaction the batch can never be mined, so it is `failed` and its leaves
are released. A leaf belongs to at most one live batch at a time, so no job
is posted twice and none is lost.

Reorganisations (coordinator/follower.py): each run starts by checking the
blocks it relied on against the canonical chain. A batch whose posting left
the chain goes back to `sent` with its leaves; its signed bytes are broadcast
again (every live transaction of ours, postings and finalize calls, in nonce
order: a dropped one below would hold the others back) and its receipt is
recorded again, under whatever batch id the chain now gives it. New
transactions never take the nonce of a dropped one (`next_nonce`), so a
dropped batch is never displaced and its leaves never end up in two batches.
A receipt counts only with `confirmations` blocks on top of it, and only
while its block is canonical.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from coordinator import models as m
from coordinator.chain import Chain
from coordinator.errors import PostingError
from coordinator.follower import ChainFollower
from coordinator.metrics import Metrics
from coordinator.wallet import Wallet
from opinfer.trace.leaf import MAX_INPUTS_BYTES, MAX_LEAVES, Batch, ResultLeaf

log = logging.getLogger("opinfer.coordinator.poster")
MAX_RUNS = 32            # ResultRollup.MAX_RUNS
CRASH_POINTS = ("before_send", "after_send", "before_receipt_recorded")


def no_crash(point: str) -> None:
    pass


def result_leaf(leaf: m.Leaf) -> ResultLeaf:
    return ResultLeaf(bytes.fromhex(leaf.job_id), leaf.job.model_id, leaf.input_root, leaf.output_root, leaf.node,
                      leaf.job.input, leaf.signature)


def signature_ok(leaf: ResultLeaf, chain_id: int, rollup: str) -> bool:
    """The chain's own rule (ResultRollup.leaf_signer over the compact form
    that would be posted), so nothing is posted that DisputeGame.challenge
    would refuse as "bad node signature" or void_forged_leaf could void."""
    return leaf.signature_valid(chain_id, rollup)


def pack(leaves: list[m.Leaf], max_leaves: int = MAX_LEAVES) -> list[m.Leaf]:
    """Leaves for one batch in order: grouped by (node, model) so the runs
    stay few, within the rollup's limits on leaves, runs and input bytes."""
    groups: dict[tuple, list[m.Leaf]] = {}
    for leaf in leaves:
        groups.setdefault((leaf.node, leaf.job.model_id), []).append(leaf)
    out, size = [], 0
    for group in list(groups.values())[:MAX_RUNS]:
        for leaf in group:
            if len(out) == max_leaves:
                return out
            if size + len(leaf.job.input) > MAX_INPUTS_BYTES:
                continue
            out.append(leaf)
            size += len(leaf.job.input)
    return out


class BatchPoster:
    def __init__(self, sessions, chain: Chain, wallet: Wallet, clock: Callable[[], float], metrics: Metrics,
                 max_leaves: int = MAX_LEAVES, receipt_timeout: float = 120.0, confirmations: int = 0,
                 crash: Callable[[str], None] = no_crash, on_reject: Callable[[str, str], None] | None = None,
                 follower: ChainFollower | None = None):
        self.sessions = sessions
        self.chain = chain
        self.wallet = wallet
        self.clock = clock
        self.metrics = metrics
        self.max_leaves = max_leaves
        self.receipt_timeout = receipt_timeout
        self.confirmations = confirmations   # blocks on top of a batch's before it counts as posted
        self.crash = crash
        self.on_reject = on_reject or (lambda node, reason: None)
        self._lock = threading.Lock()
        self.follower = follower or ChainFollower(sessions, chain, metrics, confirmations=confirmations, clock=clock)
        self.last_posted_at: float | None = None   # health: when a batch was last recorded posted
        self.last_error: str | None = None

    def unstick(self) -> None:
        """While a receipt is awaited: undo a reorganisation that happened meanwhile and send
        its dropped transactions again (ours below the awaited one hold it in the pool)."""
        self.follower.sync()
        self.follower.resend(self.wallet)

    def pending_count(self) -> int:
        with self.sessions() as s:
            return len(s.scalars(select(m.Leaf.id).where(m.Leaf.status == m.PENDING, m.Leaf.batch_pk.is_(None)))
                       .all())

    def run_once(self) -> list[int]:
        """Reconcile unfinished batches, then post every pending leaf; returns the chain batch ids posted."""
        with self._lock, self.wallet.lock:
            try:
                posted = self._run()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise
            self.last_error = None
            return posted

    def _run(self) -> list[int]:
        self.follower.sync()
        posted = self.reconcile()
        # Only the leaves pending now: under steady traffic new leaves keep
        # arriving while a receipt is awaited, and chasing them would post a
        # stream of tiny batches (more gas per leaf, and CPU taken from
        # answering requests). They wait for the next tick.
        with self.sessions() as s:
            upto = s.scalar(select(func.max(m.Leaf.id)).where(m.Leaf.status == m.PENDING,
                                                              m.Leaf.batch_pk.is_(None)))
        while upto is not None and (batch_pk := self.prepare(upto)) is not None:
            posted += self.send(batch_pk)
        return posted

    # ------------------------------------------------------------ steps

    def prepare(self, upto: int | None = None) -> int | None:
        """Record the next batch of pending leaves (with ids up to `upto`); None when there is none."""
        with self.sessions() as s, s.begin():
            query = select(m.Leaf).where(m.Leaf.status == m.PENDING, m.Leaf.batch_pk.is_(None))
            if upto is not None:
                query = query.where(m.Leaf.id <= upto)
            candidates = s.scalars(query.options(selectinload(m.Leaf.job)).order_by(m.Leaf.id)
                                   .limit(4 * MAX_LEAVES)).all()
            if not candidates:
                return None
            chosen = pack(self._postable(s, candidates), self.max_leaves)
            if not chosen:
                return None
            batch = Batch([result_leaf(leaf) for leaf in chosen])
            nonce = self.follower.next_nonce(self.wallet)
            try:
                raw, tx_hash = self.wallet.sign(self.chain.rollup.functions.post_batch(*batch.calldata), nonce)
            except PostingError as exc:
                # A rollup that still wants *active* stake refuses the batch of an unbonding
                # (still slashable) node: post the others now rather than stall every batch;
                # that node's leaves stay pending (never rejected) for a rollup that takes them.
                if "node not staked" not in str(exc):
                    raise
                chosen = [leaf for leaf in chosen if self.chain.node_active(leaf.node)]
                if not chosen:
                    return None
                batch = Batch([result_leaf(leaf) for leaf in chosen])
                raw, tx_hash = self.wallet.sign(self.chain.rollup.functions.post_batch(*batch.calldata), nonce)
            row = m.Batch(state=m.PREPARED, root=batch.root, leaf_count=len(chosen), nonce=nonce, tx_hash=tx_hash,
                          raw_tx=raw, created_at=self.clock())
            s.add(row)
            s.flush()
            for index, leaf in enumerate(chosen):
                leaf.batch_pk, leaf.leaf_index = row.id, index
            return row.id

    def _postable(self, s, leaves: list[m.Leaf]) -> list[m.Leaf]:
        """Drop (as `rejected`) leaves the rollup would refuse or a challenger could void."""
        out, staked, active = [], {}, {}
        for leaf in leaves:
            rl = result_leaf(leaf)
            if leaf.node not in staked:
                # slashable, not "active": a node that asked to unbond after answering is
                # still slashable, and its leaf must be posted so its lie can be punished
                staked[leaf.node] = self.chain.node_slashable(leaf.node)
            if rl.model_id not in active:
                active[rl.model_id] = self.chain.model_active(rl.model_id)
            reason = None
            if not signature_ok(rl, self.chain.chain_id, self.chain.rollup.address):
                reason = "signature does not recover to the node"
            elif not staked[leaf.node]:
                reason = "node has no slashable stake"
            elif not active[rl.model_id]:
                reason = "model not active"
            if reason:
                leaf.status, leaf.note = m.REJECTED, reason
                self.on_reject(leaf.node, reason)
                log.warning("leaf %s of job %s rejected: %s", leaf.id, leaf.job_id, reason)
            else:
                out.append(leaf)
        return out

    def send(self, batch_pk: int) -> list[int]:
        with self.sessions() as s:
            raw = s.get(m.Batch, batch_pk).raw_tx
        self.crash("before_send")
        self.wallet.broadcast(raw)
        self.crash("after_send")
        with self.sessions() as s, s.begin():
            row = s.get(m.Batch, batch_pk)
            row.state = m.SENT
            tx_hash = row.tx_hash
        receipt = self.wallet.wait(tx_hash, self.receipt_timeout, self.confirmations, canonical=True,
                                   unstick=self.unstick)
        if receipt is None:
            raise PostingError(f"batch tx 0x{tx_hash.hex()} not mined with {self.confirmations} confirmations "
                               f"within {self.receipt_timeout} s")
        self.crash("before_receipt_recorded")
        return self.record(batch_pk, receipt)

    def record(self, batch_pk: int, receipt) -> list[int]:
        now = self.clock()
        with self.sessions() as s, s.begin():
            row = s.get(m.Batch, batch_pk)
            if receipt["status"] != 1:
                self._fail(row, "transaction reverted")
                return []
            event = self.chain.batches_posted(receipt)[0]
            if event.root != row.root:
                raise PostingError(f"batch {batch_pk}: chain root differs from the recorded one")
            # First: it rolls back what a reorganisation since the last sync dropped (this row too).
            self.follower.remember(s, receipt["blockNumber"], bytes(receipt["blockHash"]))
            # The id is the canonical chain's now: a row still holding it is one
            # whose posting a reorganisation moved (its own receipt is read again).
            for other in s.scalars(select(m.Batch).where(m.Batch.chain_batch_id == event.batch_id,
                                                         m.Batch.id != row.id)).all():
                other.state, other.chain_batch_id, other.block_number, other.block_hash = m.SENT, None, None, None
                for leaf in other.leaves:
                    if leaf.status != m.REJECTED:
                        leaf.status = m.PENDING
            s.flush()
            first = row.posted_at is None
            row.state, row.chain_batch_id = m.BATCH_POSTED, event.batch_id
            row.deadline, row.block_number = event.deadline, receipt["blockNumber"]
            row.block_hash = bytes(receipt["blockHash"])
            row.posted_at = row.posted_at or now
            for leaf in row.leaves:
                leaf.status = m.POSTED
                if first:
                    self.metrics.posting_lag.observe(max(0.0, now - leaf.created_at))
            if first:
                self.metrics.batch_size.observe(row.leaf_count)
            self.last_posted_at = now
            log.info("batch %s posted as #%s (%s leaves%s)", batch_pk, row.chain_batch_id, row.leaf_count,
                     "" if first else f", again after a reorganisation ({row.reposts} re-posts)")
            return [row.chain_batch_id]

    def _fail(self, row: m.Batch, reason: str) -> None:
        row.state, row.error = m.FAILED, reason
        for leaf in list(row.leaves):
            leaf.batch_pk, leaf.leaf_index = None, None  # back to the pending pool
        log.warning("batch %s failed (%s); its leaves wait for the next batch", row.id, reason)

    def reconcile(self) -> list[int]:
        posted = []
        with self.sessions() as s:
            open_batches = s.scalars(select(m.Batch).where(m.Batch.state.in_((m.PREPARED, m.SENT)))
                                     .order_by(m.Batch.nonce)).all()
        for row in open_batches:
            receipt = self.wallet.receipt(row.tx_hash)
            # Another transaction took the nonce (with `confirmations` on top: a
            # reorganisation could still bring ours back): it can never be mined.
            if receipt is None and self.wallet.mined_nonce(self.confirmations) > row.nonce:
                receipt = self.wallet.receipt(row.tx_hash)  # mined in between?
                if receipt is None:
                    with self.sessions() as s, s.begin():
                        self._fail(s.get(m.Batch, row.id), f"nonce {row.nonce} used by another transaction")
                    continue
        # Every live transaction of ours without a receipt goes out again, in nonce order.
        self.follower.resend(self.wallet)
        with self.sessions() as s:
            open_batches = s.scalars(select(m.Batch).where(m.Batch.state.in_((m.PREPARED, m.SENT)))
                                     .order_by(m.Batch.nonce)).all()
        for row in open_batches:
            receipt = self.wallet.wait(row.tx_hash, self.receipt_timeout, self.confirmations, canonical=True,
                                       unstick=self.unstick)
            if receipt is None:
                raise PostingError(f"batch {row.id}: tx 0x{row.tx_hash.hex()} still not mined with "
                                   f"{self.confirmations} confirmations")
            posted += self.record(row.id, receipt)
        return posted
