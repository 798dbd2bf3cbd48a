"""Finality and disputes, as the chain reports them.

- finalize: once a posted batch's deadline has passed (chain time), call
  ResultRollup.finalize (anyone may; it is idempotent on our side: we read
  `finalized` first), then take each leaf's status from `leaf_status`.
- watch: read LeafDisputed / LeafUndisputed / LeafInvalidated events from
  the last block seen (kept in chain_cursor) and refresh those leaves'
  status from `leaf_status`. A leaf is `final` only when the chain says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from coordinator import models as m
from coordinator.chain import Chain
from coordinator.errors import PostingError
from coordinator.metrics import Metrics
from coordinator.wallet import Wallet

log = logging.getLogger("opinfer.coordinator.finalizer")
EVENTS = ("LeafDisputed", "LeafUndisputed", "LeafInvalidated", "BatchFinalized")
CURSOR = "rollup_events"
MAX_RANGE = 5_000   # blocks per eth_getLogs call


class Finalizer:
    def __init__(self, sessions, chain: Chain, wallet: Wallet, clock: Callable[[], float], metrics: Metrics,
                 receipt_timeout: float = 120.0):
        self.sessions = sessions
        self.chain = chain
        self.wallet = wallet
        self.clock = clock
        self.metrics = metrics
        self.receipt_timeout = receipt_timeout

    def run_once(self) -> list[int]:
        """Watch events, then finalize due batches; returns the chain batch ids finalized now."""
        self.watch()
        return self.finalize_due()

    def finalize_due(self) -> list[int]:
        now = self.chain.timestamp()
        with self.sessions() as s:
            due = s.scalars(select(m.Batch).where(m.Batch.state == m.BATCH_POSTED, m.Batch.deadline < now)
                            .order_by(m.Batch.chain_batch_id)).all()
        done = []
        for batch in due:
            if not self.chain.batch(batch.chain_batch_id)["finalized"]:
                try:
                    receipt = self.wallet.transact(self.chain.rollup.functions.finalize(batch.chain_batch_id),
                                                   self.receipt_timeout)
                except PostingError as exc:  # e.g. someone else finalized it first
                    log.info("finalize #%s: %s", batch.chain_batch_id, exc)
                    receipt = None
                if not self.chain.batch(batch.chain_batch_id)["finalized"]:
                    log.warning("batch #%s not finalized yet (receipt %s)", batch.chain_batch_id, receipt)
                    continue
            self._settle(batch.id)
            done.append(batch.chain_batch_id)
        # Leaves still under dispute in final batches: keep asking.
        with self.sessions() as s:
            open_ = s.scalars(select(m.Leaf).join(m.Batch).where(m.Batch.state == m.BATCH_FINAL,
                                                                m.Leaf.status == m.DISPUTED)).all()
        for leaf in open_:
            self._refresh_leaf(leaf.id)
        return done

    def _settle(self, batch_pk: int) -> None:
        now = self.clock()
        with self.sessions() as s, s.begin():
            batch = s.get(m.Batch, batch_pk)
            batch.state, batch.finalized_at = m.BATCH_FINAL, now
            for leaf in batch.leaves:
                status = self.chain.leaf_status(batch.chain_batch_id, leaf.leaf_index)
                self._set(leaf, status, now)

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
        head = self.chain.w3.eth.block_number
        with self.sessions() as s:
            cursor = s.get(m.ChainCursor, CURSOR)
            if cursor:
                start = cursor.block + 1
            else:  # a fresh database: nothing of ours happened before our first batch
                first = s.scalars(select(m.Batch.block_number).where(m.Batch.block_number.is_not(None))
                                  .order_by(m.Batch.block_number)).first()
                start = first if first is not None else head
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
                        self._set(leaf, self.chain.leaf_status(batch_id, index), self.clock())
                row = s.get(m.ChainCursor, CURSOR) or m.ChainCursor(name=CURSOR, block=end)
                row.block = end
                s.add(row)
            start = end + 1
        return seen
