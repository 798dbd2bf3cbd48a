"""The coordinator's view of the chain, kept on the canonical chain.

The poster and the finalizer call `sync()` first on each run (both under the
wallet's lock, so one of them at a time). It compares the hashes of the
blocks the coordinator derived state from (opinfer.chain.reorg.HeadTracker,
kept in `chain_blocks`) with the canonical chain; after a reorganisation it
rolls back what the chain no longer backs and lets the usual steps derive it
again:

- a batch whose posting block left the canonical chain goes back to `sent`
  (no chain id, no deadline; its leaves read `pending`). Its transaction is
  looked up by hash: mined again elsewhere, it is recorded again (possibly
  under another batch id and deadline); dropped, the same signed bytes are
  broadcast again (`resend`) so the same leaves are posted once more, never
  in a second batch;
- a batch whose finalize left the chain goes back to `posted`, its leaves'
  status is read again, and the dropped finalize is re-sent;
- the dispute-event cursor moves back to the fork and every leaf whose
  status came from an event (disputed, invalid) is read again.

Batch identity is the posting transaction and its content, so nothing here
trusts a chain batch id from before the reorganisation. `vouch` does the
same check for the API between two runs: a status is reported only while
the blocks that back it are canonical."""

from __future__ import annotations

import logging
import time

from sqlalchemy import delete, or_, select

from coordinator import models as m
from coordinator.chain import Chain
from coordinator.metrics import Metrics
from opinfer.chain.reorg import HeadTracker, canonical_hash

log = logging.getLogger("opinfer.coordinator.follower")
CURSOR = "rollup_events"   # the finalizer's event cursor (finalizer.CURSOR)


class ChainFollower:
    def __init__(self, sessions, chain: Chain, metrics: Metrics, max_depth: int = 64, confirmations: int = 0,
                 clock=time.time):
        self.sessions, self.chain, self.metrics = sessions, chain, metrics
        self.max_depth, self.confirmations, self.clock = max_depth, confirmations, clock
        self.reorgs = 0             # reorganisations seen by this process
        self.last_reorg: dict | None = None

    # ------------------------------------------------------------ tracking

    def _tracker(self, s) -> HeadTracker:
        rows = s.scalars(select(m.ChainBlock)).all()
        return HeadTracker(self.max_depth, {r.number: r.hash for r in rows})

    def _save(self, s, tracker: HeadTracker) -> None:
        s.execute(delete(m.ChainBlock))
        for number, block_hash in tracker.blocks.items():
            s.add(m.ChainBlock(number=number, hash=block_hash))

    def remember(self, s, number: int, block_hash: bytes) -> None:
        """Record a block state was derived from (a receipt's, the head read up to), in session `s`.

        The blocks remembered so far are checked first, and what a reorganisation dropped is
        rolled back: the tracker trusts every block below a canonical newest one, so a block
        added on top of a history that a reorganisation has replaced since the last sync (a
        posting mined after a finalize was dropped) would hide the drop for good."""
        canonical = canonical_hash(self.chain.w3)
        tracker = self._tracker(s)
        fork = tracker.check(canonical)
        if fork is not None:
            self._rollback(s, fork, canonical)
            self._count_reorg()
        tracker.remember(number, block_hash)
        self._save(s, tracker)

    def _count_reorg(self) -> None:
        self.reorgs += 1
        self.metrics.reorgs.inc()

    def safe_head(self) -> int:
        return max(0, self.chain.w3.eth.block_number - self.confirmations)

    def sync(self) -> int | None:
        """Detect a reorganisation and roll back what the chain no longer backs;
        returns the fork block (None: no reorganisation)."""
        canonical = canonical_hash(self.chain.w3)
        # The head is read before the check: one read after it could be of a branch that
        # replaced the checked blocks in between, and would then hide them (HeadTracker).
        head = self.chain.w3.eth.get_block("latest")
        with self.sessions() as s, s.begin():
            tracker = self._tracker(s)
            fork = tracker.check(canonical)
            if fork is not None:
                self._rollback(s, fork, canonical)
            tracker.remember(head["number"], bytes(head["hash"]))
            self._save(s, tracker)
        if fork is not None:
            self._count_reorg()
        return fork

    def _rollback(self, s, fork: int, canonical) -> None:
        moved = dropped = unfinalized = 0
        batches = s.scalars(select(m.Batch).where(
            m.Batch.state.in_((m.BATCH_POSTED, m.BATCH_FINAL)),
            or_(m.Batch.block_number > fork, m.Batch.finalize_block > fork))).all()
        for b in batches:
            if b.block_number is not None and b.block_number > fork and canonical(b.block_number) != b.block_hash:
                still = _receipt(self.chain.w3, b.tx_hash)
                b.state, b.chain_batch_id, b.deadline = m.SENT, None, None
                b.block_number = b.block_hash = None
                b.finalized_at = b.finalize_block = b.finalize_block_hash = None
                for leaf in b.leaves:
                    if leaf.status in (m.POSTED, m.DISPUTED, m.FINAL, m.INVALID):
                        leaf.status = m.PENDING
                if still is None:   # dropped: the same bytes go out again (resend)
                    b.reposts = (b.reposts or 0) + 1
                    self.metrics.reposted_leaves.inc(b.leaf_count)
                    dropped += 1
                else:
                    moved += 1
            elif (b.state == m.BATCH_FINAL and b.finalize_block is not None and b.finalize_block > fork
                  and canonical(b.finalize_block) != b.finalize_block_hash):
                b.state, b.finalized_at = m.BATCH_POSTED, None
                b.finalize_block = b.finalize_block_hash = None
                unfinalized += 1
                for leaf in b.leaves:
                    if leaf.status in (m.FINAL, m.DISPUTED, m.INVALID, m.POSTED):
                        leaf.status = self.chain.leaf_status(b.chain_batch_id, leaf.leaf_index)
        s.flush()
        # Statuses that came from dispute events: read again (the events may be gone).
        for leaf in s.scalars(select(m.Leaf).join(m.Batch).where(
                m.Batch.state.in_((m.BATCH_POSTED, m.BATCH_FINAL)),
                m.Leaf.status.in_((m.DISPUTED, m.INVALID)))).all():
            status = self.chain.leaf_status(leaf.batch.chain_batch_id, leaf.leaf_index)
            if status in (m.POSTED, m.DISPUTED, m.FINAL, m.INVALID):
                leaf.status = status
        cursor = s.get(m.ChainCursor, CURSOR)
        if cursor is not None and cursor.block > fork:
            cursor.block = fork
        self.last_reorg = {"fork": fork, "at": self.clock(), "batches_moved": moved, "batches_dropped": dropped,
                           "finalizations_dropped": unfinalized}
        log.warning("chain reorganised above block %s: %s batch postings dropped (re-sent), %s mined again "
                    "elsewhere, %s finalizations dropped", fork, dropped, moved, unfinalized)

    # ------------------------------------------------------------ our transactions

    def live_txs(self, s, mined_nonce: int) -> list[tuple[int, bytes, bytes]]:
        """(nonce, raw, hash) of our transactions not known to be mined whose
        nonce is still free: batch postings in flight and finalize calls."""
        out = [(b.nonce, b.raw_tx, b.tx_hash) for b in s.scalars(
            select(m.Batch).where(m.Batch.state.in_((m.PREPARED, m.SENT)))).all()]
        # Every finalize not known to be mined, whatever its batch's state now: its nonce lies
        # between our other transactions', so it must be mined (or fail) for them to be. One
        # sent under an id a reorganisation moved finalizes whatever batch holds it (anyone
        # may), or reverts; the finalizer then sends one for the batch's new id.
        out += [(b.finalize_nonce, b.finalize_raw_tx, b.finalize_tx_hash) for b in s.scalars(
            select(m.Batch).where(m.Batch.finalize_tx_hash.is_not(None), m.Batch.finalize_block.is_(None))).all()]
        return sorted(t for t in out if t[0] >= mined_nonce)

    def next_nonce(self, wallet) -> int:
        """A nonce no transaction of ours holds: past the chain's pending count
        and past every live transaction (one a reorganisation dropped must be
        re-sent with its own nonce, never see it taken by a new one)."""
        pending = wallet.next_nonce()
        with self.sessions() as s:
            live = self.live_txs(s, wallet.mined_nonce())
        return max([pending] + [nonce + 1 for nonce, _, _ in live])

    def resend(self, wallet) -> int:
        """Broadcast again, in nonce order, each live transaction the chain has
        no receipt for (dropped by a reorganisation, or never sent before a
        crash); returns how many. Sending one the node has is a no-op."""
        with self.sessions() as s:
            live = self.live_txs(s, wallet.mined_nonce())
        sent = 0
        for _, raw, tx_hash in live:
            if wallet.receipt(tx_hash) is None:
                wallet.broadcast(raw)
                sent += 1
        return sent

    # ------------------------------------------------------------ the API's check

    def vouch(self, view: dict) -> dict:
        """The job view with each leaf's status as far as the canonical chain
        backs it now: a leaf whose posting block is no longer canonical reads
        `pending` (no batch id or proof), a `final` leaf whose finalize block is
        no longer canonical reads `posted`. Used between two follower runs."""
        hashes = [leaf["tx_hash"] for leaf in view.get("leaves", []) if leaf.get("tx_hash")]
        if not hashes:
            return view
        with self.sessions() as s:
            rows = {"0x" + b.tx_hash.hex(): b for b in s.scalars(
                select(m.Batch).where(m.Batch.tx_hash.in_([bytes.fromhex(h[2:]) for h in hashes]))).all()}
        changed = False
        for item in view["leaves"]:
            b = rows.get(item.get("tx_hash") or "")
            if b is None:
                continue
            if b.block_number is None or self._canonical(b.block_number) != b.block_hash:
                item.update(status=m.PENDING, batch_id=None, leaf_index=None, proof=None, tx_hash=None,
                            batch_root=None, deadline=None, note="its batch left the canonical chain: re-posting")
                item.pop("leaf_hash", None)
                changed = True
            elif item["status"] == m.FINAL and (b.state != m.BATCH_FINAL or (
                    b.finalize_block is not None and self._canonical(b.finalize_block) != b.finalize_block_hash)):
                item["status"] = m.POSTED
                changed = True
        if changed:
            primary = next((i for i in view["leaves"] if i.get("agrees")), None)
            if primary is not None:
                for key in ("status", "batch_id", "leaf_index", "proof", "tx_hash", "batch_root", "deadline"):
                    view[key] = primary.get(key)
                view["leaf_hash"] = primary.get("leaf_hash")
        return view

    def _canonical(self, number: int) -> bytes | None:
        # Read every time (no cache): a cached hash is exactly what a reorganisation makes stale.
        return canonical_hash(self.chain.w3)(number)


def _receipt(w3, tx_hash: bytes):
    from web3.exceptions import TransactionNotFound

    try:
        return w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        return None
