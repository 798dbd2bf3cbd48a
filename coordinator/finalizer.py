"""Finality and disputes, as the canonical chain reports them.

- finalize: once a posted batch's deadline has passed (chain time), call
  ResultRollup.finalize (anyone may). The transaction is signed and recorded
  on the batch before it is sent, so a reorganisation that drops it finds it
  there and re-sends the same bytes (follower.resend); a finalize that went
  to a stale id (the batch was re-mined under another) or reverted is
  replaced by a new one. A batch is `final` only once the chain, read
  `confirmations` blocks below the head, says it is finalized; its
  finalizing block is recorded and checked on every run (follower.sync).
- watch: read LeafDisputed / LeafUndisputed / LeafInvalidated events from
  the last block seen (kept in chain_cursor) up to `confirmations` below
  the head, and refresh those leaves' status from `leaf_status`. A leaf is
  `final` only when the chain says so. A reorganisation moves the cursor
  back to the fork (follower.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from coordinator import models as m
from coordinator.chain import Chain
from coordinator.errors import PostingError
from coordinator.follower import ChainFollower
from coordinator.metrics import Metrics
from coordinator.wallet import Wallet

log = logging.getLogger("opinfer.coordinator.finalizer")
EVENTS = ("LeafDisputed", "LeafUndisputed", "LeafInvalidated", "BatchFinalized")
CURSOR = "rollup_events"
MAX_RANGE = 5_000   # blocks per eth_getLogs call


class Finalizer:
    def __init__(self, sessions, chain: Chain, wallet: Wallet, clock: Callable[[], float], metrics: Metrics,
                 receipt_timeout: float = 120.0, confirmations: int = 0, follower: ChainFollower | None = None):
        self.sessions = sessions
        self.chain = chain
        self.wallet = wallet
        self.clock = clock
        self.metrics = metrics
        self.receipt_timeout = receipt_timeout
        self.confirmations = confirmations
        self.follower = follower or ChainFollower(sessions, chain, metrics, confirmations=confirmations, clock=clock)
        self.finalize_resent = 0     # finalize transactions sent again after a reorganisation or a stale id

    def run_once(self) -> list[int]:
        """Follow the chain, watch events, then finalize due batches; returns the chain batch ids finalized now."""
        with self.wallet.lock:   # one of poster and finalizer at a time: sync rolls back rows both use
            self.follower.sync()
            self.follower.resend(self.wallet)   # a finalize (or posting) a reorganisation dropped
            self.watch()
            return self.finalize_due()

    def _safe_block(self) -> int:
        return self.follower.safe_head()

    def finalize_due(self) -> list[int]:
        now = self.chain.timestamp()
        safe = self._safe_block()
        with self.sessions() as s:
            due = s.scalars(select(m.Batch).where(m.Batch.state == m.BATCH_POSTED, m.Batch.deadline < now)
                            .order_by(m.Batch.chain_batch_id)).all()
        done = []
        for batch in due:
            if not self.chain.batch(batch.chain_batch_id, block=safe)["finalized"]:
                try:
                    self._finalize(batch)
                except PostingError as exc:  # e.g. someone else finalized it first: read next run
                    log.info("finalize #%s: %s", batch.chain_batch_id, exc)
                    continue
                safe = self._safe_block()
                if not self.chain.batch(batch.chain_batch_id, block=safe)["finalized"]:
                    continue
            if self._settle(batch.id, batch.chain_batch_id):
                done.append(batch.chain_batch_id)
        # Leaves still under dispute in final batches: keep asking.
        with self.sessions() as s:
            open_ = s.scalars(select(m.Leaf).join(m.Batch).where(m.Batch.state == m.BATCH_FINAL,
                                                                m.Leaf.status == m.DISPUTED)).all()
        for leaf in open_:
            self._refresh_leaf(leaf.id)
        return done

    def _finalize(self, batch: m.Batch) -> None:
        """Send (or wait for) our finalize of `batch`, recorded before it is sent."""
        if batch.finalize_tx_hash is not None:
            receipt = self.wallet.receipt(batch.finalize_tx_hash)
            if receipt is None:
                if self.wallet.mined_nonce(self.confirmations) <= batch.finalize_nonce:
                    return   # in flight, or dropped and re-sent by follower.resend
            elif receipt["status"] == 1 and self._finalizes(receipt, batch.chain_batch_id):
                return       # ours: done, or waiting for its confirmations (the caller reads the chain)
            # Mined without finalizing this batch (reverted, or sent under an id a
            # reorganisation gave to another batch), or its nonce went elsewhere: a new one.
            self.finalize_resent += 1
            log.warning("finalize of batch %s (#%s) did not take; sending a new one", batch.id,
                        batch.chain_batch_id)
        nonce = self.follower.next_nonce(self.wallet)
        raw, tx_hash = self.wallet.sign(self.chain.rollup.functions.finalize(batch.chain_batch_id), nonce)
        with self.sessions() as s, s.begin():
            row = s.get(m.Batch, batch.id)
            row.finalize_nonce, row.finalize_tx_hash, row.finalize_raw_tx = nonce, tx_hash, raw
            row.finalize_block = row.finalize_block_hash = None
        self.wallet.broadcast(raw)
        # The outcome is read from the chain (now or next run): no long wait holding the key's lock.
        self.wallet.wait(tx_hash, min(self.receipt_timeout, 10.0), unstick=self._unstick)

    def _unstick(self) -> None:
        self.follower.sync()
        self.follower.resend(self.wallet)

    def _finalizes(self, receipt, batch_id: int) -> bool:
        events = self.chain.rollup.events.BatchFinalized().process_receipt(receipt)
        return any(e["args"]["batch_id"] == batch_id for e in events)

    def _finalized_in(self, batch: m.Batch) -> tuple[int, bytes] | None:
        """(block number, hash) of the BatchFinalized event of the batch's current id."""
        logs = self.chain.rollup.events.BatchFinalized().get_logs(
            from_block=batch.block_number or 0, argument_filters={"batch_id": batch.chain_batch_id})
        if not logs:
            return None
        return logs[-1]["blockNumber"], bytes(logs[-1]["blockHash"])

    def _settle(self, batch_pk: int, batch_id: int) -> bool:
        now = self.clock()
        with self.sessions() as s, s.begin():
            batch = s.get(m.Batch, batch_pk)
            if batch.state != m.BATCH_POSTED or batch.chain_batch_id != batch_id:
                return False
            where = self._finalized_in(batch)
            if where is None:
                return False   # the log is not there (yet): read again next run
            self.follower.remember(s, *where)   # first: it rolls back what a reorganisation dropped
            if batch.state != m.BATCH_POSTED or batch.chain_batch_id != batch_id:
                return False   # this batch's posting was among it
            batch.state, batch.finalized_at = m.BATCH_FINAL, now
            batch.finalize_block, batch.finalize_block_hash = where
            for leaf in batch.leaves:
                status = self.chain.leaf_status(batch.chain_batch_id, leaf.leaf_index)
                self._set(leaf, status, now)
            return True

    def _set(self, leaf: m.Leaf, status: str, now: float) -> None:
        if status not in (m.POSTED, m.DISPUTED, m.FINAL, m.INVALID) or status == leaf.status:
            return
        if status == m.FINAL:
            self.metrics.finalization_lag.observe(max(0.0, now - leaf.created_at))
        leaf.status = status

    def _refresh_leaf(self, leaf_id: int) -> None:
        with self.sessions() as s, s.begin():
            leaf = s.get(m.Leaf, leaf_id)
            self._set(leaf, self.chain.leaf_status(leaf.batch.chain_batch_id, leaf.leaf_index), self.clock())

    def watch(self) -> int:
        """Apply rollup events since the cursor; returns how many were seen."""
        head = self._safe_block()
        with self.sessions() as s:
            cursor = s.get(m.ChainCursor, CURSOR)
            if cursor:
                start = cursor.block + 1
            else:  # a fresh database: nothing of ours happened before our first batch
                first = s.scalars(select(m.Batch.block_number).where(m.Batch.block_number.is_not(None))
                                  .order_by(m.Batch.block_number)).first()
                start = min(first, head) if first is not None else head
        seen = 0
        while start <= head:
            end = min(head, start + MAX_RANGE - 1)
            touched: set[tuple[int, int]] = set()
            for name in EVENTS:
                for event in getattr(self.chain.rollup.events, name)().get_logs(from_block=start, to_block=end):
                    args = event["args"]
                    seen += 1
                    if name == "BatchFinalized":
                        continue  # _settle reads leaf status itself
                    self.metrics.disputes.labels(name).inc()
                    touched.add((args["batch_id"], args["leaf_index"]))
            with self.sessions() as s, s.begin():
                for batch_id, index in touched:
                    leaf = s.scalars(select(m.Leaf).join(m.Batch).where(m.Batch.chain_batch_id == batch_id,
                                                                       m.Leaf.leaf_index == index)).first()
                    if leaf is not None:
                        self._set(leaf, self.chain.leaf_status(batch_id, index, block=end), self.clock())
                row = s.get(m.ChainCursor, CURSOR) or m.ChainCursor(name=CURSOR, block=end)
                row.block = end
                s.add(row)
            start = end + 1
        return seen
