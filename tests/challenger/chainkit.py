"""A small protocol on anvil for the challenger's end-to-end tests: the
contracts deployed as the devnet does, a toy model registered, staked
nodes, a coordinator posting signed leaves, and a node-side defender that
answers its games from whatever trace it committed to (honest or not)."""

from __future__ import annotations

import itertools

from web3 import HTTPProvider, Web3

from opinfer.chain.anvil import Anvil, dev_keys
from opinfer.chain.deploy import ProtocolParams, deploy, register_program
from opinfer.chain.game import GameClient
from opinfer.chain.sender import TxSender
from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, toy_job, toy_program

ROLES = ("deployer", "coordinator", "challenger", "honest", "cheat", "cheat2", "cheat3", "cheat4", "cheat5", "cheat6")
STAKE = 2 * 10**18


class Net:
    def __init__(self, params: ProtocolParams = ProtocolParams(challenge_window=600, clock_budget=300)):
        self.anvil = Anvil(accounts=10).start()
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
            for role in ROLES[3:]:
                self.senders[role].call(self.c["StakeManager"].functions.stake_eth(), value=STAKE)
        except Exception:
            self.anvil.stop()
            raise
        self.job_ids = itertools.count(1)
        self.traces: dict[bytes, Trace] = {}  # job id -> the trace its node committed to

    @property
    def rollup(self) -> str:
        return self.d.addresses["ResultRollup"]

    def leaf(self, role: str, seed: int, lie: bool = False) -> ResultLeaf:
        job = toy_job(seed)
        trace = corrupted_trace(self.program, job, 3, 0, 5, delta=40) if lie else Trace.of(self.program, job)
        job_id = next(self.job_ids).to_bytes(16, "big")
        self.traces[job_id] = trace
        leaf = ResultLeaf(job_id, self.model_id, trace.input_root, trace.output_root, self.addr[role],
                          input=job.to_bytes())
        return leaf.signed(self.senders[role].account.key, self.w3.eth.chain_id, self.rollup)

    def post(self, leaves: list[ResultLeaf]) -> int:
        self.senders["coordinator"].call(self.c["ResultRollup"].functions.post_batch(*Batch(leaves).calldata))
        return self.c["ResultRollup"].functions.batch_count().call()

    def forwarder(self, owner: str = "coordinator"):
        """A contract wallet owned by `owner`, allowed to post batches (test-only
        contracts/test/Forwarder.vy: never part of a deployment)."""
        from opinfer.chain import artifacts
        from opinfer.chain.deploy import contract

        art = artifacts.load("Forwarder")
        address = self.senders[owner].deploy(art.abi, art.bytecode)
        self.senders["deployer"].call(self.c["ResultRollup"].functions.set_coordinator(address, True))
        return contract(self.w3, "Forwarder", address, art.path.parent)   # test-only: ABI in build/

    def post_via(self, forwarder, leaves: list[ResultLeaf], owner: str = "coordinator") -> int:
        """Post a batch through `forwarder`: the transaction calls the forwarder, which calls post_batch."""
        rollup = self.c["ResultRollup"]
        data = rollup.encode_abi("post_batch", args=Batch(leaves).calldata)
        self.senders[owner].call(forwarder.functions.forward(rollup.address, data))
        return rollup.functions.batch_count().call()

    def time_travel(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def leaf_status(self, batch_id: int, index: int) -> int:
        return self.c["ResultRollup"].functions.leaf_status(batch_id, index).call()

    def stop(self) -> None:
        self.anvil.stop()


class Defender:
    """The node's side of every game against `role`: answers from the trace it committed to."""

    def __init__(self, net: Net, role: str):
        self.net = net
        self.me = net.addr[role]
        self.client = GameClient(net.c["DisputeGame"], TxSender(net.w3, net.keys[role]))

    def games(self) -> dict[int, bytes]:
        logs = self.net.c["DisputeGame"].events.GameStarted().get_logs(from_block=0,
                                                                      argument_filters={"node": self.me})
        return {e["args"]["game_id"]: bytes(e["args"]["job_id"]) for e in logs}

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
