"""A small protocol on anvil for the node's tests: contracts deployed as the
devnet does, the toy model registered, a coordinator posting leaves, a
challenger (the real service, or the pure player for a challenger that
disputes a correct leaf), and nodes built from node/ (in-process or as
`opinfer node run` processes through tests/node/run_node.py)."""

from __future__ import annotations

import itertools
import logging

from web3 import HTTPProvider, Web3

from node.app import ExecuteRequest, Node
from node.chain import NodeChain
from node.defender import HONEST, Defender
from node.engines import ProgramEngine
from node.metrics import Metrics
from node.store import Store
from opinfer.chain.anvil import Anvil, dev_keys
from opinfer.chain.deploy import ProtocolParams, deploy, register_program
from opinfer.chain.game import GameClient
from opinfer.chain.sender import TxSender
from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, toy_job, toy_program

ROLES = ("deployer", "coordinator", "challenger", "griefer", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8")
STAKE = 2 * 10**18
POSTED, INVALID = 1, 4


class Net:
    def __init__(self, params: ProtocolParams = ProtocolParams(challenge_window=600, clock_budget=300)):
        self.anvil = Anvil(accounts=len(ROLES)).start()
        try:
            self.w3 = Web3(HTTPProvider(self.anvil.url))
            self.keys = dict(zip(ROLES, dev_keys(len(ROLES))))
            self.senders = {role: TxSender(self.w3, key) for role, key in self.keys.items()}
            self.addr = {role: s.address for role, s in self.senders.items()}
            self.params = params
            self.d = deploy(self.w3, self.senders["deployer"], params, coordinators=(self.addr["coordinator"],))
            self.c = self.d.contracts
            self.program = toy_program()
            self.model_id = register_program(self.senders["deployer"], self.c["ModelRegistry"], self.program, 0)
            for role in ("challenger", "griefer"):
                self.senders[role].call(self.c["StakeManager"].functions.deposit_bond(), value=10**18)
        except Exception:
            self.anvil.stop()
            raise
        self.job_ids = itertools.count(1)

    @property
    def rollup(self) -> str:
        return self.d.addresses["ResultRollup"]

    def chain(self, role: str) -> NodeChain:
        return NodeChain(self.w3, TxSender(self.w3, self.keys[role]), self.rollup)

    def node(self, role: str, node_cls=Node) -> Node:
        return node_cls(self.keys[role], self.w3.eth.chain_id, self.rollup, {self.program.name: self.model_id},
                        engines_by_name={self.program.name: ProgramEngine(self.program)})

    def defender(self, role: str, tmp_path, strategy=HONEST, node: Node | None = None) -> Defender:
        programs = node.program if node is not None else (lambda name: self.program)
        return Defender(self.chain(role), Store(tmp_path / f"{role}.db"), programs, Metrics(),
                        logging.getLogger(f"test.node.{role}"), strategy=strategy,
                        start_block=self.w3.eth.block_number + 1)

    def execute(self, node: Node, seed: int) -> ResultLeaf:
        job = toy_job(seed)
        job_id = next(self.job_ids).to_bytes(16, "big")
        out = node.execute(ExecuteRequest(job_id="0x" + job_id.hex(), model=self.program.name,
                                          model_id=self.model_id, input="0x" + job.to_bytes().hex()))
        return leaf_from(out, job.to_bytes())

    def stake(self, role: str, wei: int = STAKE) -> None:
        self.senders[role].call(self.c["StakeManager"].functions.stake_eth(), value=wei)

    def post(self, leaves: list[ResultLeaf]) -> int:
        self.senders["coordinator"].call(self.c["ResultRollup"].functions.post_batch(*Batch(leaves).calldata))
        return self.c["ResultRollup"].functions.batch_count().call()

    def batch(self, leaves: list[ResultLeaf]) -> Batch:
        return Batch(leaves)

    def time_travel(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def leaf_status(self, batch_id: int, index: int) -> int:
        return self.c["ResultRollup"].functions.leaf_status(batch_id, index).call()

    def slashable(self, role: str) -> int:
        return self.c["StakeManager"].functions.slashable(self.addr[role]).call()

    def stop(self) -> None:
        self.anvil.stop()


def leaf_from(answer: dict, data: bytes) -> ResultLeaf:
    return ResultLeaf(bytes.fromhex(answer["job_id"][2:]), answer["model_id"], bytes.fromhex(answer["input_root"][2:]),
                      bytes.fromhex(answer["output_root"][2:]), answer["node"], data,
                      bytes.fromhex(answer["signature"][2:]))


class Griefer:
    """A challenger that disputes a leaf it is wrong about (its trace has one
    bad element) and plays the pure player's moves from that trace: against
    an honest node it must lose."""

    def __init__(self, net: Net, role: str = "griefer"):
        self.net = net
        self.client = GameClient(net.c["DisputeGame"], TxSender(net.w3, net.keys[role]))
        self.revealed: dict[int, list] = {}
        self.traces: dict[int, Trace] = {}

    def challenge(self, leaves: list, batch_id: int, index: int, trace: Trace | None = None) -> int:
        from web3.logs import DISCARD

        batch = Batch(leaves)
        receipt = self.client.sender.call(self.net.c["DisputeGame"].functions.challenge(
            *batch.challenge_args(batch_id, index, self.net.program.model_header())))
        gid = self.net.c["DisputeGame"].events.GameStarted().process_receipt(receipt, errors=DISCARD)[0]["args"][
            "game_id"]
        from opinfer.semantics.jobinput import JobInput

        job = JobInput.from_bytes(leaves[index].input)
        self.traces[gid] = trace or corrupted_trace(self.net.program, job, 2, 0, 7, delta=40)
        return gid

    def respond(self, gid: int) -> bool:
        """One move if it is the challenger's turn (and its clock has not run out)."""
        g = self.client.state(gid)
        if g["status"] != player.ACTIVE or g["phase"] in player.NODE_PHASES:
            return False
        revealed = self._revealed(gid, g)
        move = player.challenger_move(gid, g, self.traces[gid], self.client.arity, self.client.arity_bits, revealed)
        self.client.send(move)
        return True

    def _revealed(self, gid, g):
        from challenger.chain import REVEALED_IN

        if g["phase"] not in REVEALED_IN:
            return []
        name, field = REVEALED_IN[g["phase"]]
        logs = getattr(self.net.c["DisputeGame"].events, name)().get_logs(from_block=0,
                                                                        argument_filters={"game_id": gid})
        return list(logs[-1]["args"][field])

    def state(self, gid: int) -> dict:
        return self.client.state(gid)
