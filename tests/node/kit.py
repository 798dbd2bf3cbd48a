"""The node's tests on the shared test network (opinfer.chain.testnet: anvil,
the protocol deployed as the devnet does): the toy model registered, a
coordinator posting leaves, a challenger (the real service, or the pure
player for a challenger that disputes a correct leaf), and nodes built from
node/ (in-process or as `opinfer node run` processes through
tests/node/run_node.py)."""

from __future__ import annotations

import itertools
import logging

from node.app import ExecuteRequest, Node
from node.chain import NodeChain
from node.defender import HONEST, Defender
from node.engines import ProgramEngine
from node.metrics import Metrics
from node.store import Store
from opinfer.chain.deploy import ProtocolParams
from opinfer.chain.game import GameClient
from opinfer.chain.testnet import STAKE_WEI, ProtocolNet
from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.state import Trace
from opinfer.trace.tables import LeafStatus
from opinfer.trace.testing import corrupted_trace, toy_job, toy_program

ROLES = ("deployer", "coordinator", "challenger", "griefer", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8")
STAKE = STAKE_WEI
POSTED, INVALID = LeafStatus.POSTED, LeafStatus.INVALID


class Net(ProtocolNet):
    """The shared test network (opinfer.chain.testnet) with the toy model registered,
    bonds for the challenger and the griefer, and the node's own helpers."""

    ROLES = ROLES
    PARAMS = ProtocolParams(challenge_window=600, clock_budget=300)

    def __post_init__(self):
        self.program = toy_program()
        self.model_id = self.register(self.program)
        for role in ("challenger", "griefer"):
            self.bond(role)
        self.job_ids = itertools.count(1)

    def chain(self, role: str) -> NodeChain:
        return NodeChain(self.w3, self.sender(role), self.rollup)

    def node(self, role: str, node_cls=Node) -> Node:
        return node_cls(self.keys[role], self.chain_id, self.rollup, {self.program.name: self.model_id},
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

    def batch(self, leaves: list[ResultLeaf]) -> Batch:
        return Batch(leaves)


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
        self.client = GameClient(net.c["DisputeGame"], net.sender(role))
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
        return self.net.client().revealed(gid, g["phase"])

    def state(self, gid: int) -> dict:
        return self.client.state(gid)
