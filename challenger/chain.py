"""The challenger's chain adapter (web3): everything the service reads from
or sends to the chain goes through this one small class, so tests can swap
in a fake. Addresses come from the rollup alone (its stake manager,
registry and dispute game), so a challenger needs only the rollup's address."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from web3 import Web3
from web3.logs import DISCARD

from challenger.errors import DataUnavailable, DecodeError
from opinfer.chain import calls
from opinfer.chain.protocol import ProtocolChain
from opinfer.chain.sender import TxSender
from opinfer.trace import player
from opinfer.trace.leaf import Batch

# The node move whose event carries what the challenger answers in each phase.
REVEALED_IN = {player.PICK: ("Bisected", "claims"), player.CHOOSE: ("Descended", "hashes"),
               player.ELEMENT: ("ChunkRevealed", "values")}


@dataclass(frozen=True)
class BatchEvent:
    batch_id: int
    root: bytes
    data_hash: bytes
    leaf_count: int
    deadline: int
    tx_hash: bytes
    block_number: int
    block_hash: bytes


@dataclass(frozen=True)
class ModelInfo:
    model_id: int
    name: str
    model_root: bytes
    ops_per_step: int


def _plain(rows) -> list[tuple]:
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]


class Chain(ProtocolChain):
    def __init__(self, w3: Web3, sender: TxSender, rollup: str):
        super().__init__(w3, sender, rollup)
        self.model = lru_cache(maxsize=64)(self._model)
        self._post_batch = calls.selector(self.rollup, "post_batch")

    # ------------------------------------------------------------ reading

    def head(self) -> int:
        return self.w3.eth.block_number

    def timestamp(self, block="latest") -> int:
        return self.w3.eth.get_block(block)["timestamp"]

    def batch_events(self, from_block: int, to_block: int) -> list[BatchEvent]:
        logs = self.rollup.events.BatchPosted().get_logs(from_block=from_block, to_block=to_block)
        return [BatchEvent(e["args"]["batch_id"], bytes(e["args"]["root"]), bytes(e["args"]["data_hash"]),
                           e["args"]["leaf_count"], e["args"]["deadline"], bytes(e["transactionHash"]),
                           e["blockNumber"], bytes(e["blockHash"])) for e in logs]

    def slashed_nodes(self, from_block: int, to_block: int) -> list[str]:
        logs = self.stake_manager.events.Slashed().get_logs(from_block=from_block, to_block=to_block)
        return [e["args"]["node"] for e in logs]

    def load_batch(self, batch_id: int, tx_hash: bytes) -> Batch:
        """Rebuild the batch from the calldata of the post_batch call that posted
        it, wherever that call sits in its transaction (a direct call, or one made
        by a contract wallet or forwarder: opinfer.chain.calls), and check it
        against the root the rollup stored (never trust the calldata blindly).
        Raises DataUnavailable when the call was made by a contract and the RPC
        cannot trace transactions."""
        root, data_hash = (bytes(v) for v in self.rollup.functions.batch(batch_id).call()[:2])
        try:
            inputs = calls.call_inputs(self.w3, tx_hash, self.rollup.address, self._post_batch)
        except calls.TracerUnavailable as exc:
            raise DataUnavailable(f"batch {batch_id}: {exc}") from None
        if not inputs:
            raise DecodeError(f"batch {batch_id}: transaction 0x{bytes(tx_hash).hex()} makes no post_batch call")
        errors = []
        for raw in inputs:  # a contract may post several batches in one transaction: match by root
            try:
                fn, args = self.rollup.decode_function_input(raw)
                batch = Batch.from_calldata(_plain(args["_leaves"]), _plain(args["_runs"]), bytes(args["_inputs"]))
            except Exception as exc:  # noqa: BLE001 - any malformed calldata
                errors.append(f"calldata does not decode: {exc}")
                continue
            if batch.root == root and batch.data_hash == data_hash:
                return batch
            errors.append("calldata does not match the posted root")
        raise DecodeError(f"batch {batch_id}: {'; '.join(errors)}")

    def _model(self, model_id: int) -> ModelInfo:
        root, ops_per_step, _, _ = self.registry.functions.get_model(model_id).call()
        return ModelInfo(model_id, self.registry.functions.model_name(model_id).call(), bytes(root), ops_per_step)

    def leaf_signed(self, record: tuple) -> bool:
        return self.rollup.functions.leaf_signer(record).call() == record[6]

    def has_challenged(self, batch_id: int, index: int) -> bool:
        return self.game_contract.functions.has_challenged(batch_id, index, self.address).call()

    def find_game(self, batch_id: int, index: int, from_block: int = 0) -> tuple[int, int] | None:
        """(game id, block) of our game over a leaf, from GameStarted logs (a
        crash between sending a challenge and recording it leaves only this)."""
        logs = self.game_contract.events.GameStarted().get_logs(
            from_block=from_block, argument_filters={"batch_id": batch_id})
        for e in logs:
            if e["args"]["leaf_index"] == index and e["args"]["challenger"] == self.address:
                return e["args"]["game_id"], e["blockNumber"]
        return None

    def game(self, gid: int) -> dict:
        return self.games.state(gid)

    def revealed(self, gid: int, phase: int, from_block: int) -> list:
        """What the node's last move published for the challenger's `phase`."""
        name, field = REVEALED_IN[phase]
        logs = getattr(self.game_contract.events, name)().get_logs(
            from_block=from_block, argument_filters={"game_id": gid})
        return list(logs[-1]["args"][field]) if logs else []

    def challenge_bond(self) -> int:
        return self.game_contract.functions.challenge_bond().call()

    def free_bond(self) -> int:
        return self.stake_manager.functions.bond(self.address).call()

    def claimable(self) -> int:
        return self.stake_manager.functions.claimable(self.address).call()

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
        _, revealed = self.games.send(move)
        return revealed

    def deposit_bond(self, wei: int) -> None:
        self.sender.call(self.stake_manager.functions.deposit_bond(), value=wei)

    def claim(self) -> int:
        amount = self.claimable()
        if amount:
            self.sender.call(self.stake_manager.functions.claim())
        return amount
