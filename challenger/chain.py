"""The challenger's chain adapter: the protocol client (opinfer.chain.protocol:
typed reads, batches decoded from calldata, the game's moves) plus the
challenger's own few calls. Everything the service reads from or sends to
the chain goes through this one small class, so tests can swap in a fake
(tests/challenger/fakes.py). Addresses come from the rollup alone."""

from __future__ import annotations

from functools import lru_cache

from web3 import Web3
from web3.logs import DISCARD

from challenger.errors import DataUnavailable, DecodeError
from opinfer.chain.client import REVEALED_IN, BatchMismatch, BatchUnavailable  # noqa: F401 - REVEALED_IN re-exported
from opinfer.chain.client import BatchPosted as BatchEvent
from opinfer.chain.client import ModelInfo
from opinfer.chain.protocol import ProtocolChain
from opinfer.chain.sender import TxSender
from opinfer.trace import player
from opinfer.trace.leaf import Batch

__all__ = ["BatchEvent", "Chain", "ModelInfo", "REVEALED_IN"]


class Chain(ProtocolChain):
    def __init__(self, w3: Web3, sender: TxSender, rollup: str):
        super().__init__(w3, sender, rollup)
        self.model = lru_cache(maxsize=64)(self.model)   # a model's registry entry does not change under us

    # ------------------------------------------------------------ reading

    def load_batch(self, batch_id: int, tx_hash: bytes) -> Batch:
        """The batch from its calldata, checked against the stored root (ProtocolClient.load_batch),
        in the service's errors: DataUnavailable (no tracer), DecodeError (no matching call)."""
        try:
            return super().load_batch(batch_id, tx_hash)
        except BatchUnavailable as exc:
            raise DataUnavailable(str(exc)) from None
        except BatchMismatch as exc:
            raise DecodeError(str(exc)) from None

    def leaf_signed(self, record: tuple) -> bool:
        return self.leaf_signer(record) == record[6]

    def find_game(self, batch_id: int, index: int, from_block: int = 0) -> tuple[int, int] | None:
        """(game id, block) of our game over a leaf, from GameStarted logs (a
        crash between sending a challenge and recording it leaves only this)."""
        for e in self.games_started(from_block, batch_id=batch_id):
            if e.leaf_index == index and e.challenger == self.address:
                return e.game_id, e.block_number
        return None

    def free_bond(self) -> int:
        return self.bond()

    # ------------------------------------------------------------ sending

    def challenge(self, batch: Batch, batch_id: int, index: int, model_header: bytes) -> tuple[int, int]:
        receipt = self.sender.call(self.game_contract.functions.challenge(
            *batch.challenge_args(batch_id, index, model_header)))
        event = self.game_contract.events.GameStarted().process_receipt(receipt, errors=DISCARD)[0]
        return event["args"]["game_id"], receipt["blockNumber"]

    def void_forged(self, batch: Batch, batch_id: int, index: int) -> None:
        self.sender.call(self.rollup.functions.void_forged_leaf(batch_id, index, batch.records[index],
                                                               batch.proof(index)))

    def send(self, move: player.Move) -> list:
        _, revealed = self.send_move(move)
        return revealed

    def deposit_bond(self, wei: int) -> None:
        self.sender.call(self.stake_manager.functions.deposit_bond(), value=wei)

    def claim(self) -> int:
        amount = self.claimable()
        if amount:
            self.sender.call(self.stake_manager.functions.claim())
        return amount
