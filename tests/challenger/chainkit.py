"""The challenger's end-to-end tests on the shared test network
(opinfer.chain.testnet: anvil, the protocol deployed as the devnet does):
a toy model registered, staked nodes, a coordinator posting signed leaves,
and a node-side defender that answers its games from whatever trace it
committed to (honest or not)."""

from __future__ import annotations

import itertools

from opinfer.chain.deploy import ProtocolParams
from opinfer.chain.game import GameClient
from opinfer.chain.testnet import STAKE_WEI, ProtocolNet
from opinfer.trace import player
from opinfer.trace.leaf import ResultLeaf
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, toy_job, toy_program

ROLES = ("deployer", "coordinator", "challenger", "honest", "cheat", "cheat2", "cheat3", "cheat4", "cheat5", "cheat6")
STAKE = STAKE_WEI


class Net(ProtocolNet):
    """The shared test network (opinfer.chain.testnet) with the toy model registered,
    every node role staked, and signed leaves whose traces the nodes keep."""

    ROLES = ROLES
    PARAMS = ProtocolParams(challenge_window=600, clock_budget=300)

    def __post_init__(self):
        self.program = toy_program()
        self.model_id = self.register(self.program)
        for role in ROLES[3:]:
            self.stake(role)
        self.job_ids = itertools.count(1)
        self.traces: dict[bytes, Trace] = {}  # job id -> the trace its node committed to

    def leaf(self, role: str, seed: int, lie: bool = False) -> ResultLeaf:
        job = toy_job(seed)
        trace = corrupted_trace(self.program, job, 3, 0, 5, delta=40) if lie else Trace.of(self.program, job)
        job_id = next(self.job_ids).to_bytes(16, "big")
        self.traces[job_id] = trace
        leaf = ResultLeaf(job_id, self.model_id, trace.input_root, trace.output_root, self.addr[role],
                          input=job.to_bytes())
        return leaf.signed(self.senders[role].account.key, self.chain_id, self.rollup)


class Defender:
    """The node's side of every game against `role`: answers from the trace it committed to."""

    def __init__(self, net: Net, role: str):
        self.net = net
        self.me = net.addr[role]
        self.client = GameClient(net.c["DisputeGame"], net.sender(role))

    def games(self) -> dict[int, bytes]:
        return {e.game_id: e.job_id for e in self.net.client().games_started(0, node=self.me)}

    def respond(self) -> int:
        """One move in each game where it is the node's turn; returns how many."""
        moved = 0
        for gid, job_id in self.games().items():
            g = self.client.state(gid)
            if g["status"] == player.ACTIVE and g["phase"] in player.NODE_PHASES:
                self.client.send(player.node_move(gid, g, self.net.traces[job_id], self.client.arity,
                                                  self.client.arity_bits))
                moved += 1
        return moved
