"""Contract suite: one anvil (launched by brownie) for the whole session,
the system deployed once per module, each test isolated by a chain snapshot."""

from __future__ import annotations

import numpy as np
import pytest
from brownie import accounts, chain

from opinfer.trace import bisection
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.program import Trace
from opinfer.trace.testing import corrupted_trace, toy_program  # noqa: F401  (re-exported for tests)
from scripts.deploy import DeployParams, deploy_system

ETHER = 10**18
PHASES = {1: "open", 2: "bisect", 3: "pick", 4: "tensor", 5: "descend", 6: "choose", 7: "chunk", 8: "element", 9: "step"}
NODE_PHASES = {1, 2, 4, 5, 7}
ACTIVE, NODE_WON, CHALLENGER_WON, VOID = 1, 2, 3, 4


@pytest.fixture(autouse=True)
def isolate(fn_isolation):
    pass


@pytest.fixture(scope="module")
def params():
    return DeployParams()


@pytest.fixture(scope="module")
def deployer():
    return accounts[0]


@pytest.fixture(scope="module")
def treasury():
    return accounts[9]


@pytest.fixture(scope="module")
def coordinator():
    return accounts[1]


@pytest.fixture(scope="module")
def challengers():
    return list(accounts[2:5])


@pytest.fixture(scope="module")
def nodes(deployer):
    """Nodes need private keys to sign leaves: fresh local accounts, funded."""
    out = []
    for i in range(3):
        acct = accounts.add(f"0x{(0xA11CE + i):064x}")
        deployer.transfer(acct, 50 * ETHER)
        out.append(acct)
    return out


@pytest.fixture(scope="module")
def system(deployer, treasury, coordinator, params):
    return deploy_system(deployer, treasury, params, coordinators=[coordinator])


@pytest.fixture(scope="module")
def program():
    return toy_program()


@pytest.fixture(scope="module")
def model_id(system, program, deployer):
    tx = system.registry.register_model("toy-dot", program.model_root, program.num_ops, 1000, {"from": deployer})
    return tx.return_value


@pytest.fixture(scope="module")
def staked(system, nodes, challengers, params):
    for node in nodes:
        system.stake.stake_eth({"from": node, "value": 2 * params.min_stake})
    for c in challengers:
        system.stake.deposit_bond({"from": c, "value": 1 * ETHER})
    return True


@pytest.fixture(scope="module")
def job_input():
    return np.random.default_rng(11).integers(-128, 128, size=(2, 24))


@pytest.fixture(scope="module")
def honest_trace(program, job_input):
    return Trace(program, program.run(job_input))


def make_leaf(trace: Trace, node, model_id: int, rollup, job: int = 1) -> ResultLeaf:
    leaf = ResultLeaf(
        job_id=job.to_bytes(32, "big"), model_id=model_id, input_root=trace.input_root,
        output_root=trace.output_root, node=node.address, input=b"job-input-%d" % job,
    )
    return leaf.signed(node.private_key, chain.id, rollup.address)


def post(system, coordinator, leaves: list[ResultLeaf]):
    batch = Batch(leaves)
    tx = system.rollup.post_batch([r for r in batch.records], {"from": coordinator})
    return tx.return_value, batch, tx


def game_state(game, gid) -> dict:
    return dict(game.games(gid).dict())


class Driver:
    """Plays both sides of a game from two traces, through the real contracts."""

    def __init__(self, system, gid, node, node_trace: Trace, challenger, chal_trace: Trace):
        self.s, self.gid = system, gid
        self.node, self.node_trace = node, node_trace
        self.challenger, self.chal_trace = challenger, chal_trace
        self.last = None
        self.txs = []

    @property
    def state(self) -> dict:
        return game_state(self.s.game, self.gid)

    def node_move(self):
        g, t, game = self.state, self.node_trace, self.s.game
        sender = {"from": self.node}
        phase = g["phase"]
        if phase == 1:
            tx = game.open_trace(self.gid, t.state_root(t.n), t.state_proof(t.n, t.n), sender)
        elif phase == 2:
            pts = bisection.dissection_points(g["lo"], g["hi"], self.s.params.arity)
            tx = game.bisect(self.gid, [t.state_root(p) for p in pts], sender)
        elif phase == 4:
            hi = g["hi"]
            tx = game.reveal_tensor(self.gid, t.trees[hi].root, t.state_proof(hi, hi),
                                    t.program.header(hi - 1), sender)
        elif phase == 5:
            tree = t.trees[g["hi"]]
            m = bisection.descent_levels(g["level"], g["depth"], game.arity_bits())
            hashes = [tree.node(g["level"] + m, (g["index"] << m) + j) for j in range(1 << m)]
            tx = game.descend(self.gid, hashes, sender)
        elif phase == 7:
            tx = game.reveal_chunk(self.gid, t.trees[g["hi"]].chunk(g["index"]), sender)
        else:
            raise AssertionError(f"not the node's phase: {phase}")
        return tx

    def challenger_move(self):
        g, t, game = self.state, self.chal_trace, self.s.game
        sender = {"from": self.challenger}
        phase = g["phase"]
        if phase == 3:
            claims = list(self.last.events["Bisected"]["claims"])
            pts = bisection.dissection_points(g["lo"], g["hi"], self.s.params.arity)
            ours = [t.state_root(p) for p in pts] + [t.state_root(g["hi"])]
            part = bisection.first_disagreement([bytes(c) for c in claims] + [bytes(g["hi_root"])], ours)
            tx = game.pick(self.gid, claims, part, sender)
        elif phase == 6:
            hashes = [bytes(h) for h in self.last.events["Descended"]["hashes"]]
            tree = t.trees[g["hi"]]
            m = bisection.descent_levels(g["level"], g["depth"], game.arity_bits())
            ours = [tree.node(g["level"] + m, (g["index"] << m) + j) for j in range(1 << m)]
            tx = game.choose(self.gid, hashes, bisection.first_disagreement(hashes, ours), sender)
        elif phase == 8:
            values = list(self.last.events["ChunkRevealed"]["values"])
            ours = t.trees[g["hi"]].chunk(g["index"])
            tx = game.pick_element(self.gid, values, bisection.first_disagreement(values, ours), sender)
        elif phase == 9:
            tx = self.step(self.challenger)
        else:
            raise AssertionError(f"not the challenger's phase: {phase}")
        return tx

    def step(self, sender, trace: Trace | None = None):
        g, t = self.state, trace or self.chal_trace
        op = g["hi"] - 1
        return self.s.game.step(self.gid, t.program.header(op), t.dot_witness(op, g["row"], g["col"]),
                                {"from": sender})

    def play(self, until_phase: int | None = None, max_moves: int = 60):
        for _ in range(max_moves):
            g = self.state
            if g["status"] != ACTIVE or g["phase"] == until_phase:
                return g
            self.last = self.node_move() if g["phase"] in NODE_PHASES else self.challenger_move()
            self.txs.append(self.last)
        raise AssertionError("game did not end")
