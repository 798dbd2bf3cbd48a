"""Contract suite: one anvil (launched by brownie) for the whole session,
the system deployed once per module, each test isolated by a chain snapshot."""

from __future__ import annotations

import numpy as np
import pytest
from brownie import accounts, chain

from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, toy_job, toy_program  # noqa: F401  (re-exported for tests)

PROGRAM_HEADER = toy_program().model_header()
from scripts.deploy import DeployParams, deploy_system

ETHER = 10**18
ACTIVE, NODE_WON, CHALLENGER_WON, VOID = player.ACTIVE, player.NODE_WON, player.CHALLENGER_WON, player.VOID


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
    return toy_job(11)


@pytest.fixture(scope="module")
def honest_trace(program, job_input):
    return Trace.of(program, job_input)


def make_leaf(trace: Trace, node, model_id: int, rollup, job: int = 1) -> ResultLeaf:
    leaf = ResultLeaf(
        job_id=job.to_bytes(16, "big"), model_id=model_id, input_root=trace.input_root,
        output_root=trace.output_root, node=node.address, input=trace.job.to_bytes(),
    )
    return leaf.signed(node.private_key, chain.id, rollup.address)


def post(system, coordinator, leaves: list[ResultLeaf]):
    batch = Batch(leaves)
    tx = system.rollup.post_batch(*batch.calldata, {"from": coordinator})
    return tx.return_value, batch, tx


def game_state(game, gid) -> dict:
    return player.game_state(game.games(gid))


class Driver:
    """Plays both sides of a game from two traces, through the real contracts
    (moves chosen by opinfer.trace.player, sent with brownie)."""

    def __init__(self, system, gid, node, node_trace: Trace, challenger, chal_trace: Trace):
        self.s, self.gid = system, gid
        self.node, self.node_trace = node, node_trace
        self.challenger, self.chal_trace = challenger, chal_trace
        self.revealed: list = []
        self.txs = []
        self.bits = system.game.arity_bits()

    @property
    def state(self) -> dict:
        return player.game_state(self.s.game.games(self.gid))

    def _send(self, move: player.Move, sender):
        tx = getattr(self.s.game, move.function)(*move.args, {"from": sender})
        if move.function in player.REVEAL_EVENTS:
            event, field = player.REVEAL_EVENTS[move.function]
            self.revealed = list(tx.events[event][field])
        self.txs.append(tx)
        return tx

    def node_move(self):
        move = player.node_move(self.gid, self.state, self.node_trace, self.s.params.arity, self.bits)
        return self._send(move, self.node)

    def challenger_move(self):
        move = player.challenger_move(self.gid, self.state, self.chal_trace, self.s.params.arity, self.bits,
                                      self.revealed)
        return self._send(move, self.challenger)

    def step(self, sender, trace: Trace | None = None):
        return self._send(player.step_move(self.gid, self.state, trace or self.chal_trace), sender)

    def play(self, until_phase: int | None = None, max_moves: int = 60):
        for _ in range(max_moves):
            g = self.state
            if g["status"] != ACTIVE or g["phase"] == until_phase:
                return g
            if g["phase"] in player.NODE_PHASES:
                self.node_move()
            else:
                self.challenger_move()
        raise AssertionError("game did not end")
