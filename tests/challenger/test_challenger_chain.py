"""The challenger against the real contracts on anvil, in-process: honest
leaves are checked and left alone; dishonest ones are disputed, played to
the one-step proof and won (node slashed, reward claimed), several games at
once; a node that stops answering loses on time."""

import logging

import pytest

from challenger.chain import Chain
from challenger.executors import ProgramExecutor
from challenger.metrics import Metrics
from challenger.sampler import Sampler
from challenger.service import Challenger
from challenger.store import OPEN, WON, Store
from opinfer.chain.sender import TxSender
from opinfer.trace import player
from tests.challenger.chainkit import Defender, Net

POSTED, INVALID = 1, 4


@pytest.fixture(scope="module")
def net():
    n = Net.start()
    yield n
    n.stop()


def make_challenger(net, tmp_path, rate=1.0, executor=None, **kw):
    chain = Chain(net.w3, TxSender(net.w3, net.keys["challenger"]), net.rollup)
    return Challenger(chain, Store(tmp_path / "challenger.db"), {"toy-dot": executor or ProgramExecutor(net.program)},
                      Sampler(b"k" * 32, rate), Metrics(), logging.getLogger("test.challenger.chain"),
                      bond_top_up=10**18, start_block=net.w3.eth.block_number + 1, **kw)  # this test's batches only


def metric(c, name):
    """The sum of a metric over its labels."""
    total = 0.0
    for line in c.metrics.render().decode().splitlines():
        metric_name = line.split("{")[0].split(" ")[0]
        if metric_name in (f"opinfer_challenger_{name}_total", f"opinfer_challenger_{name}"):
            total += float(line.split()[-1])
    return total


def play_out(c, defenders, open_left=0, rounds=60):
    for _ in range(rounds):
        c.tick()
        moved = sum(d.respond() for d in defenders)
        if len(c.store.disputes(OPEN)) <= open_left and not moved:
            return
    raise AssertionError("games did not end")


def test_honest_leaves_are_checked_and_never_disputed(net, tmp_path):
    c = make_challenger(net, tmp_path)
    batches = [net.post([net.leaf("honest", s) for s in range(i, i + 4)]) for i in range(0, 12, 4)]
    c.tick()
    c.tick()
    assert c.store.disputes() == [] and metric(c, "leaves_checked") == 12
    assert all(c.store.batch(b).status == "done" for b in batches)
    assert all(net.leaf_status(b, i) == POSTED for b in batches for i in range(4))
    assert net.c["DisputeGame"].functions.game_count().call() == 0


def test_a_lie_is_disputed_bisected_to_one_step_and_won(net, tmp_path):
    c = make_challenger(net, tmp_path)
    sm = net.c["StakeManager"].functions
    me = net.addr["challenger"]
    before = net.w3.eth.get_balance(me)
    batch_id = net.post([net.leaf("honest", 20), net.leaf("cheat", 21, lie=True), net.leaf("honest", 22)])
    c.tick()
    (d,) = c.store.disputes()
    assert (d.batch_id, d.leaf_index, d.status) == (batch_id, 1, OPEN)
    play_out(c, [Defender(net, "cheat")])
    (d,) = c.store.disputes()
    g = c.chain.game(d.game_id)
    assert d.status == WON and g["status"] == player.CHALLENGER_WON and g["phase"] == player.STEP
    assert (g["hi"], g["row"], g["col"]) == (3, 0, 5)  # the one wrong element, found by bisection
    assert sm.slashable(net.addr["cheat"]).call() == 0
    assert net.leaf_status(batch_id, 1) == INVALID
    assert net.leaf_status(batch_id, 0) == POSTED and net.leaf_status(batch_id, 2) == POSTED
    # reward (half the stake) claimed; the bond is back in the free bond
    assert sm.claimable(me).call() == 0 and metric(c, "rewards_claimed_wei") == 10**18
    # 1 ETH deposited as bond (still ours, free again) and 1 ETH of reward paid out: only gas is spent
    assert before - 10**16 < net.w3.eth.get_balance(me) < before
    assert sm.bond(me).call() == 10**18 and sm.locked_bond(me).call() == 0
    assert metric(c, "disputes_won") == 1 and metric(c, "disputes_lost") == 0
    moves = [line for line in c.metrics.render().decode().splitlines() if line.startswith("opinfer_challenger_moves_total")]
    assert any('function="step"' in m for m in moves) and any('function="pick"' in m for m in moves)


def test_many_games_at_once_and_a_silent_node_loses_on_time(net, tmp_path):
    c = make_challenger(net, tmp_path)
    b1 = net.post([net.leaf("cheat2", 30, lie=True), net.leaf("honest", 31)])
    b2 = net.post([net.leaf("cheat2", 32, lie=True), net.leaf("cheat3", 33, lie=True)])
    b3 = net.post([net.leaf("honest", 34), net.leaf("cheat2", 35, lie=True)])
    c.tick()
    assert len(c.store.disputes(OPEN)) == 4
    # cheat2 defends all its games, interleaved in the same ticks; cheat3 stays silent
    play_out(c, [Defender(net, "cheat2")], open_left=1)
    results = {(d.batch_id, d.leaf_index): d.status for d in c.store.disputes()}
    assert results == {(b1, 0): WON, (b2, 0): WON, (b3, 1): WON, (b2, 1): OPEN}
    net.time_travel(net.params.clock_budget + 1)
    c.tick()
    c.tick()
    assert {d.status for d in c.store.disputes()} == {WON}
    assert all(net.leaf_status(b, i) == INVALID for b, i in results)
    assert net.leaf_status(b1, 1) == POSTED and net.leaf_status(b3, 0) == POSTED


def test_a_lie_posted_through_a_contract_is_still_decoded_and_disputed(net, tmp_path):
    """Issue 14, point 6: a coordinator posting through a contract wallet hid the batch from the
    challenger (it read top-level calldata only: "undecodable", the lie went final). The
    challenger now finds the post_batch call inside the transaction's call tree."""
    fwd = net.forwarder()
    c = make_challenger(net, tmp_path)
    batch_id = net.post_via(fwd, [net.leaf("honest", 60), net.leaf("cheat4", 61, lie=True)])
    tx = net.w3.eth.get_transaction(c.chain.batch_events(0, net.w3.eth.block_number)[-1].tx_hash)
    assert tx["to"] == fwd.address  # the transaction never calls the rollup directly
    c.tick()
    assert c.store.batch(batch_id).status == "done" and metric(c, "leaves_checked") == 2
    (d,) = c.store.disputes()
    assert (d.batch_id, d.leaf_index, d.status) == (batch_id, 1, OPEN)
    play_out(c, [Defender(net, "cheat4")])
    assert c.store.disputes()[0].status == WON and net.leaf_status(batch_id, 1) == INVALID


def test_without_a_call_tracer_a_contract_posted_batch_is_an_alert(net, tmp_path):
    """An RPC without debug_traceTransaction cannot show a call made by a contract: the batch is
    recorded unavailable with a critical log line and its own metric, never silently skipped."""
    from web3 import HTTPProvider, Web3

    class NoDebug(HTTPProvider):  # answers debug_* as a node with the debug API disabled does
        def make_request(self, method, params):
            if method.startswith("debug_"):
                return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": f"{method} does not exist"}}
            return super().make_request(method, params)

    fwd = net.forwarder()
    c = make_challenger(net, tmp_path)
    w3 = Web3(NoDebug(net.anvil.url))
    c.chain = Chain(w3, TxSender(w3, net.keys["challenger"]), net.rollup)
    direct = net.post([net.leaf("honest", 70)])
    hidden = net.post_via(fwd, [net.leaf("honest", 71)])
    c.tick()
    assert c.store.batch(direct).status == "done"   # a direct call needs no tracer
    assert c.store.batch(hidden).status == "unavailable" and metric(c, "batches_unavailable") == 1


class CostlyExecutor(ProgramExecutor):
    """The toy program re-executed at a chat job's price: `cost_s` per job (bench.challenger: about
    2.6 s per SmolLM2 job; scaled down here)."""

    def __init__(self, program, cost_s):
        super().__init__(program)
        self.cost_s, self.jobs = cost_s, 0

    def output_roots(self, jobs):
        import time

        time.sleep(self.cost_s * len(jobs))
        self.jobs += len(jobs)
        return super().output_roots(jobs)


def test_a_lazy_nodes_backlog_cannot_stall_disputes_or_games(net, tmp_path):
    """Issue 14, point 12: a lazy node with a large backlog is caught once; re-checking the
    backlog ran inside the scan, so its caught lie was challenged, and every open game moved,
    only after the whole backlog was re-executed (with a real backlog: after the window and the
    clocks). Now the catch is challenged at once, games keep moving while workers re-check the
    backlog earliest window first, the lies in the backlog are found and disputed, and what the
    node can make us re-execute is bounded (the rest is counted)."""
    import time

    cost, budget = 0.05, 60
    slow = CostlyExecutor(net.program, cost)
    c = make_challenger(net, tmp_path, rate=0.0, executor=slow, recheck_budget=budget, settle_s=1.0)
    # An open game against another liar, which must keep moving.
    c.sampler.rate = 1.0
    other = net.post([net.leaf("cheat5", 400, lie=True)])
    c.tick()
    c.sampler.rate = 0.0
    (game,) = c.store.disputes(OPEN)
    # The lazy node's backlog: 3 batches of 30 leaves (nothing sampled), a lie in each of the first two.
    backlog = [net.post([net.leaf("cheat6", 500 + 30 * k + i, lie=(k < 2 and i == 7)) for i in range(30)])
               for k in range(3)]
    c.tick()
    assert slow.jobs == 1   # the other liar's sampled leaf only
    # The catch: one sampled lie of the lazy node.
    c.sampler.rate = 1.0
    caught = net.post([net.leaf("cheat6", 999, lie=True)])
    started = time.monotonic()
    c.tick()
    took = time.monotonic() - started
    c.sampler.rate = 0.0
    opened = {(d.batch_id, d.leaf_index) for d in c.store.disputes(OPEN)}
    assert (caught, 0) in opened and took < 90 * cost / 2, took   # not behind the backlog
    other_liar = Defender(net, "cheat5")
    moves_during_recheck = 0
    while c.work.queued:
        moves_during_recheck += other_liar.respond()
        c.tick()
    assert moves_during_recheck >= 2   # the other game moved while the backlog was re-checked
    play_out(c, [other_liar, Defender(net, "cheat6")])
    results = {(d.batch_id, d.leaf_index): d.status for d in c.store.disputes()}
    assert results == {(other, 0): WON, (caught, 0): WON, (backlog[0], 7): WON, (backlog[1], 7): WON}
    # Earliest window first, within the budget: the first two batches in full, the third not.
    assert metric(c, "rechecks") == 90 and slow.jobs == 2 + budget
    assert len(c.store.checked(backlog[0])) == 30 and len(c.store.checked(backlog[2])) == 0
    lines = c.metrics.render().decode().splitlines()
    assert 'opinfer_challenger_rechecks_total{outcome="over_budget"} 30.0' in lines


def test_a_job_outside_the_models_committed_limits_is_disputed_and_won_at_once(net, tmp_path):
    """Issue 14 point 5, challenger side: a node that signs a job its model's committed limits refuse
    (here one position too many) loses inside `challenge`; the challenger must dispute it, not count
    it unverifiable, even when the node's output is what the program computes."""
    import dataclasses

    from opinfer.semantics.program import JobLimits
    from opinfer.trace.leaf import ResultLeaf
    from opinfer.trace.state import Trace
    from opinfer.trace.testing import TOY_TOKENS, toy_job, toy_program

    limited = dataclasses.replace(toy_program(), name="toy-limited",
                                  limits=JobLimits(positions=TOY_TOKENS - 1, vocab=1 << 16))
    model_id = net.register(limited)
    from eth_account import Account

    from tests.challenger.chainkit import STAKE

    node = TxSender(net.w3, Account.create().key)     # a node of its own: earlier tests slashed every role
    net.w3.eth.send_transaction({"from": net.addr["deployer"], "to": node.address, "value": STAKE + 10**18})
    node.call(net.c["StakeManager"].functions.stake_eth(), value=STAKE)
    job = toy_job(90)                        # TOY_TOKENS positions: one above the limit
    trace = Trace(limited, job, limited.run(job))   # what the program computes, limits aside
    leaf = ResultLeaf((9_000).to_bytes(16, "big"), model_id, trace.input_root, trace.output_root, node.address,
                      input=job.to_bytes()).signed(node.account.key, net.w3.eth.chain_id, net.rollup)
    batch_id = net.post([leaf])
    chain = Chain(net.w3, TxSender(net.w3, net.keys["challenger"]), net.rollup)
    c = Challenger(chain, Store(tmp_path / "challenger.db"), {"toy-limited": ProgramExecutor(limited)},
                   Sampler(b"k" * 32, 1.0), Metrics(), logging.getLogger("test.challenger.limits"),
                   bond_top_up=10**18, start_block=net.w3.eth.block_number)
    c.tick()
    c.tick()
    (d,) = c.store.disputes()
    assert (d.batch_id, d.reason) == (batch_id, "job-limits")
    assert d.status == WON and c.chain.game(d.game_id)["status"] == player.CHALLENGER_WON
    assert net.leaf_status(batch_id, 0) == INVALID
    assert net.c["StakeManager"].functions.slashable(node.address).call() == 0
