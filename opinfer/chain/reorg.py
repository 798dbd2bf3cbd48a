"""Following a chain that reorganises (as op-batcher / op-challenger do).

A service that derives state from the chain remembers the hash of each block
it has derived from (the heads it read up to, the blocks of the events and
receipts it relied on), the newest `depth` of them. Before each pass it
compares those hashes with the canonical chain's: the highest remembered block
whose hash still matches is the common ancestor, and everything the service
derived from blocks above it is rolled back and derived again from the
canonical chain. A reorganisation deeper than `depth` blocks is detected too
(no remembered hash matches), and the service then re-derives from the oldest
block it remembers, with an error logged: beyond the bound nothing is promised.

Confirmations are the other half: a service relies on a transaction (records
a batch posted, a finalize done, a dispute open) only once that many blocks
are on top of it. `default_confirmations` gives the documented default per
chain kind: 0 on a local devnet (anvil, hardhat: blocks are final unless a
test reorganises them), a safe depth elsewhere.

Pure logic except `canonical_hash`, `HeadTracker.check`'s callable and the
anvil helpers at the end (tests)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

log = logging.getLogger("opinfer.chain.reorg")

# Local development chains: anvil's and hardhat's default chain ids.
DEVNET_CHAIN_IDS = frozenset({31337, 1337})
# Blocks on top before a transaction is relied on, outside a devnet. Ethereum
# L1 reorganises 1-2 blocks at the head (and finalizes after ~64); an OP Stack
# L2's unsafe head can be replaced until its batch is on L1. 12 blocks covers
# the reorganisations seen at the head of either; a deployment that wants L1
# finality sets more.
SAFE_CONFIRMATIONS = 12
# How deep a reorganisation the services detect and undo exactly (blocks).
DEFAULT_MAX_DEPTH = 64


def default_confirmations(chain_id: int) -> int:
    """The documented default: 0 on a devnet, SAFE_CONFIRMATIONS elsewhere."""
    return 0 if chain_id in DEVNET_CHAIN_IDS else SAFE_CONFIRMATIONS


def resolve_confirmations(configured: int | None, chain_id: int) -> int:
    """The configured value (None or a negative value: the chain kind's default)."""
    if configured is None or configured < 0:
        return default_confirmations(chain_id)
    return configured


class ReorgTooDeep(Exception):
    """No remembered block is on the canonical chain any more."""


class HeadTracker:
    """The hashes of the newest `depth` blocks a service derived state from.

    `check(canonical)` returns None when they are all canonical, else the
    number of the highest remembered block that still is (the fork point: the
    service keeps what it derived up to it and redoes the rest). With none
    left canonical it returns the oldest remembered number minus one and counts
    a deep reorganisation (`deep`), after logging an error.

    A check reads the newest block, every block remembered since the last check
    and the newest block of that check (its anchor), not all of them: the blocks
    below the anchor are its ancestors. Reading only the newest is not enough: a
    block remembered after a reorganisation that happened since the last check
    is canonical while the blocks it sits on top of are not. A tracker loaded
    from text, or built from rows, has no anchor: its first check reads every
    block given as `unchecked`."""

    def __init__(self, depth: int = DEFAULT_MAX_DEPTH, blocks: dict[int, bytes] | None = None,
                 unchecked=()):
        if depth < 1:
            raise ValueError("reorganisation depth bound must be >= 1")
        self.depth = depth
        self.blocks: dict[int, bytes] = dict(blocks or {})
        self.deep = 0
        self._unchecked: set[int] = set(unchecked) & set(self.blocks)
        self._anchor: int | None = None

    # ------------------------------------------------------------ persistence (JSON text)

    def dumps(self) -> str:
        return json.dumps({str(n): h.hex() for n, h in sorted(self.blocks.items())})

    @classmethod
    def loads(cls, text: str | None, depth: int = DEFAULT_MAX_DEPTH) -> "HeadTracker":
        blocks = {int(n): bytes.fromhex(h) for n, h in json.loads(text).items()} if text else {}
        return cls(depth, blocks, unchecked=blocks)

    # ------------------------------------------------------------ use

    def remember(self, number: int, block_hash: bytes) -> None:
        """Record a block derived from; keeps the newest `depth` + 1 numbers
        (one more than the bound, so a reorganisation exactly `depth` deep
        still finds its common ancestor)."""
        self.blocks[int(number)] = bytes(block_hash)
        self._unchecked.add(int(number))
        newest = max(self.blocks)
        for n in [n for n in self.blocks if n < newest - self.depth]:
            del self.blocks[n]
            self._unchecked.discard(n)

    def forget_above(self, number: int) -> None:
        for n in [n for n in self.blocks if n > number]:
            del self.blocks[n]
            self._unchecked.discard(n)

    def check(self, canonical: Callable[[int], bytes | None]) -> int | None:
        """None when every remembered block is canonical; else the fork point
        (see the class). `canonical(n)` is the canonical hash of block n, None
        when the chain is shorter than n."""
        if not self.blocks:
            return None
        numbers = sorted(self.blocks, reverse=True)
        probe = {numbers[0]} | self._unchecked
        if self._anchor in self.blocks:
            probe.add(self._anchor)
        stale = [n for n in sorted(probe) if canonical(n) != self.blocks[n]]
        self._unchecked.clear()
        if not stale:
            self._anchor = numbers[0]
            return None
        for n in numbers:
            if n < stale[0] and canonical(n) == self.blocks[n]:
                self.forget_above(n)
                self._anchor = n
                return n
        oldest = numbers[-1]
        self.deep += 1
        log.error("chain reorganised deeper than the %s blocks remembered (below block %s): re-deriving from %s",
                  self.depth, oldest, oldest - 1)
        self.blocks.clear()
        self._anchor = None
        return oldest - 1


def canonical_hash(w3) -> Callable[[int], bytes | None]:
    """`canonical(n)` for HeadTracker.check over a web3 connection."""
    def get(number: int) -> bytes | None:
        block = w3.eth.get_block(number) if number >= 0 else None
        return bytes(block["hash"]) if block else None

    def safe(number: int) -> bytes | None:
        try:
            return get(number)
        except Exception as exc:  # noqa: BLE001 - BlockNotFound: the chain is shorter now
            if type(exc).__name__ == "BlockNotFound":
                return None
            raise
    return safe


def head(w3, confirmations: int = 0) -> tuple[int, bytes]:
    """(number, hash) of the newest block with `confirmations` blocks on top."""
    number = max(0, w3.eth.block_number - confirmations)
    return number, bytes(w3.eth.get_block(number)["hash"])


def on_canonical_chain(w3, receipt) -> bool:
    """True when the block that holds `receipt` is still the canonical one at its height."""
    try:
        block = w3.eth.get_block(receipt["blockNumber"])
    except Exception:  # noqa: BLE001 - BlockNotFound
        return False
    return bytes(block["hash"]) == bytes(receipt["blockHash"])


# ---------------------------------------------------------------- anvil (tests and the fault suite)


def anvil_reorg(w3, depth: int, txs: list[tuple[bytes, int]] = ()) -> None:
    """Replace the newest `depth` blocks with `depth` new ones (the chain keeps
    its height). The transactions of the dropped blocks are gone, not back in
    the pool; `txs` are (raw signed transaction, block offset 0..depth-1) pairs
    mined into the new blocks (anvil_reorg: [depth, [[tx, offset], ...]])."""
    if depth < 1:
        raise ValueError("depth >= 1")
    pairs = [["0x" + bytes(raw).hex(), offset] for raw, offset in txs]
    r = w3.provider.make_request("anvil_reorg", [depth, pairs])
    if "error" in r:
        raise RuntimeError(f"anvil_reorg({depth}): {r['error']}")


def snapshot(w3) -> str:
    return w3.provider.make_request("evm_snapshot", [])["result"]


def revert(w3, snapshot_id: str) -> None:
    """Rewind the chain to a snapshot (a deeper rewind than anvil_reorg keeps:
    the chain gets shorter; new blocks then grow a different branch)."""
    r = w3.provider.make_request("evm_revert", [snapshot_id])
    if not r.get("result"):
        raise RuntimeError(f"evm_revert({snapshot_id}): {r}")


def raw_transaction(w3, tx_hash: bytes) -> bytes:
    """The signed bytes of a mined transaction (to mine it again after a reorganisation)."""
    r = w3.provider.make_request("eth_getRawTransactionByHash", ["0x" + bytes(tx_hash).hex()])
    if not r.get("result"):
        raise RuntimeError(f"no raw transaction for 0x{bytes(tx_hash).hex()}: {r}")
    return bytes.fromhex(r["result"][2:])
