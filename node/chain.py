"""The node's chain adapter (web3): stake, registry, dispute game. Every
address comes from the rollup (its stake manager, registry and game), so a
node needs only the rollup's address and an RPC URL."""

from __future__ import annotations

from dataclasses import dataclass

from web3 import Web3
from web3.exceptions import ContractLogicError

from node.errors import NodeError
from opinfer.chain import calls
from opinfer.chain.protocol import ProtocolChain
from opinfer.chain.sender import TxSender
from opinfer.trace import player
from opinfer.trace.leaf import Batch


@dataclass(frozen=True)
class GameStart:
    game_id: int
    batch_id: int
    leaf_index: int
    challenger: str
    job_id: bytes
    model_id: int
    input_root: bytes
    output_root: bytes
    tx_hash: bytes
    block_number: int


class NodeChain(ProtocolChain):

    # ------------------------------------------------------------ stake and registry

    def stake(self) -> int:
        return self.stake_manager.functions.stake(self.address).call()

    def min_stake(self) -> int:
        return self.stake_manager.functions.min_stake().call()

    def unbonding(self) -> tuple[int, int]:
        sm = self.stake_manager.functions
        return sm.unbonding(self.address).call(), sm.unlock_at(self.address).call()

    def add_stake(self, wei: int) -> None:
        self.sender.call(self.stake_manager.functions.stake_eth(), value=wei)

    def listing(self) -> tuple[str, list[int]] | None:
        try:
            endpoint, model_ids, _ = self.registry.functions.get_node(self.address).call()
        except ContractLogicError:
            return None
        return endpoint, list(model_ids)

    def announce(self, endpoint: str, model_ids: list[int]) -> None:
        self.sender.call(self.registry.functions.announce(endpoint, model_ids))

    def retire(self) -> None:
        self.sender.call(self.registry.functions.retire())

    def request_unbond(self, wei: int) -> None:
        self.sender.call(self.stake_manager.functions.request_unbond(wei))

    def withdraw(self) -> None:
        self.sender.call(self.stake_manager.functions.withdraw_stake())

    def model_id(self, ref: str) -> int:
        """An on-chain model id from a name or a decimal id."""
        f = self.registry.functions
        if ref.isdigit():
            model_id = int(ref)
            if not 1 <= model_id <= f.model_count().call():
                raise NodeError(f"no model with id {model_id} in the registry")
            return model_id
        model_id = f.model_id_by_name(ref).call()
        if not model_id:
            raise NodeError(f"no model named {ref!r} in the registry")
        return model_id

    def model(self, model_id: int) -> tuple[str, bytes]:
        f = self.registry.functions
        root = f.get_model(model_id).call()[0]
        return f.model_name(model_id).call(), bytes(root)

    # ------------------------------------------------------------ games

    def head(self) -> int:
        return self.w3.eth.block_number

    def timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def games_started(self, from_block: int, to_block: int) -> list[GameStart]:
        logs = self.game_contract.events.GameStarted().get_logs(
            from_block=from_block, to_block=to_block, argument_filters={"node": self.address})
        return [GameStart(a["game_id"], a["batch_id"], a["leaf_index"], a["challenger"], bytes(a["job_id"]),
                          a["model_id"], bytes(a["input_root"]), bytes(a["output_root"]), bytes(e["transactionHash"]),
                          e["blockNumber"]) for e in logs for a in [e["args"]]]

    def job_input(self, start: GameStart) -> bytes:
        """The disputed job's input bytes: from the challenge call, else from the
        batch's post_batch call, wherever each call sits in its transaction (a
        challenger or coordinator may send through a contract: opinfer.chain.calls)."""
        sel = calls.selector(self.game_contract, "challenge")
        try:
            for raw in calls.call_inputs(self.w3, start.tx_hash, self.game_contract.address, sel):
                fn, args = self.game_contract.decode_function_input(raw)
                if (args["_batch_id"], args["_index"]) == (start.batch_id, start.leaf_index):
                    return bytes(args["_input"])
        except calls.TracerUnavailable:
            pass  # fall back to the batch
        except Exception:  # noqa: BLE001 - malformed: fall back to the batch
            pass
        logs = self.rollup.events.BatchPosted().get_logs(from_block=0, to_block=start.block_number,
                                                         argument_filters={"batch_id": start.batch_id})
        if not logs:
            raise NodeError(f"game {start.game_id}: batch {start.batch_id} not found")
        root = bytes(self.rollup.functions.batch(start.batch_id).call()[0])
        plain = lambda rows: [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]  # noqa: E731
        for raw in calls.call_inputs(self.w3, bytes(logs[-1]["transactionHash"]), self.rollup.address,
                                     calls.selector(self.rollup, "post_batch")):
            try:
                _, args = self.rollup.decode_function_input(raw)
                batch = Batch.from_calldata(plain(args["_leaves"]), plain(args["_runs"]), bytes(args["_inputs"]))
            except Exception:  # noqa: BLE001 - another call's malformed data
                continue
            if batch.root == root:
                return batch.leaves[start.leaf_index].input
        raise NodeError(f"game {start.game_id}: no post_batch call in the batch's transaction matches its root")

    def game(self, gid: int) -> dict:
        return self.games.state(gid)

    def send(self, move: player.Move) -> dict:
        receipt, _ = self.games.send(move)
        return receipt

    def resolved_reason(self, gid: int, from_block: int) -> str | None:
        logs = self.game_contract.events.GameResolved().get_logs(from_block=from_block,
                                                                 argument_filters={"game_id": gid})
        return logs[-1]["args"]["reason"] if logs else None


def connect(rpc_url: str, key: str, rollup: str) -> NodeChain:
    from web3 import HTTPProvider

    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    return NodeChain(w3, TxSender(w3, key), rollup)


