"""Which leaves to re-execute: pure, no I/O.

A leaf is drawn with probability `rate` by a keyed hash of the challenger's
secret and the block hash of the block that posted the batch. The node signed
its leaf before that block existed and never sees the secret, so it cannot
tell which of its results will be checked; two challengers with different
secrets check independent samples. Every leaf of a node with a fraud record
is checked regardless of the draw."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

SCALE = 1 << 64


def draw(secret: bytes, block_hash: bytes, batch_id: int, index: int) -> int:
    """A uniform 64-bit number for one leaf, unpredictable without `secret`."""
    msg = bytes(block_hash) + batch_id.to_bytes(32, "big") + index.to_bytes(32, "big")
    return int.from_bytes(hmac.new(secret, msg, hashlib.sha256).digest()[:8], "big")


@dataclass
class Sampler:
    secret: bytes
    rate: float
    suspects: set[str] = field(default_factory=set)

    def __post_init__(self):
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"sample rate must lie in [0, 1], got {self.rate}")
        if len(self.secret) < 16:
            raise ValueError("the sampling secret needs at least 16 bytes")

    def sampled(self, block_hash: bytes, batch_id: int, index: int) -> bool:
        if self.rate >= 1.0:
            return True
        return draw(self.secret, block_hash, batch_id, index) < int(self.rate * SCALE)

    def select(self, block_hash: bytes, batch_id: int, nodes: list[str]) -> list[int]:
        """Indices to check in a batch whose leaf i was signed by nodes[i]."""
        return [i for i, node in enumerate(nodes)
                if node.lower() in self.suspects or self.sampled(block_hash, batch_id, i)]

    def mark(self, node: str) -> bool:
        """Give `node` a fraud record; True when it is new."""
        new = node.lower() not in self.suspects
        self.suspects.add(node.lower())
        return new
