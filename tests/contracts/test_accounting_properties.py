"""Property test: random interleavings of stake, unbond, withdraw, bond,
challenge and resolve keep the StakeManager's books exact.

A Python model predicts every balance bucket; after each step the contract
must match it and hold exactly what it owes. Games are real DisputeGame
games, resolved by a real move and a real timeout.
"""

import pytest
from brownie import chain
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from conftest import PROGRAM_HEADER, make_leaf, post
from opinfer.trace import bisection

ETHER = 10**18


class Books:
    def __init__(self, sm, people):
        self.sm, self.people = sm, people
        self.stake = {p: sm.stake(p) for p in people}
        self.unbonding = {p: sm.unbonding(p) for p in people}
        self.unlock = {p: sm.unlock_at(p) for p in people}
        self.bond = {p: sm.bond(p) for p in people}
        self.locked = {p: sm.locked_bond(p) for p in people}
        self.claimable = {p: sm.claimable(p) for p in people}
        self.disputes = {p: 0 for p in people}

    def check(self):
        sm = self.sm
        for p in self.people:
            assert sm.stake(p) == self.stake[p]
            assert sm.unbonding(p) == self.unbonding[p]
            assert sm.bond(p) == self.bond[p]
            assert sm.locked_bond(p) == self.locked[p]
            assert sm.claimable(p) == self.claimable[p]
            assert sm.open_disputes(p) == self.disputes[p]
        owed = sum(self.stake.values()) + sum(self.unbonding.values()) + sum(self.bond.values()) \
            + sum(self.locked.values()) + sum(self.claimable.values())
        assert sm.balance() == owed


node_i = st.integers(0, 2)
chal_i = st.integers(0, 2)
amounts = st.integers(1, 3 * ETHER)


class Accounting(RuleBasedStateMachine):
    """brownie's own `state_machine` helper fails under mypyc (it type-checks
    its wrapper class), so this is plain hypothesis over brownie snapshots."""

    fixtures: dict = {}

    def __init__(self):
        super().__init__()
        chain.revert()  # back to the snapshot taken before the run
        for name, value in self.fixtures.items():
            setattr(self, name, value)
        self.books = Books(self.s.stake, list(self.nodes) + list(self.challengers) + [self.treasury])
        self.games = []  # (game id, node, challenger)
        self.job = 0

    # ---- nodes

    @rule(node_i=node_i, amount=amounts)
    def stake(self, node_i, amount):
        node, sm = self.nodes[node_i], self.s.stake
        if self.books.stake[node] + amount < sm.min_stake():
            return
        sm.stake_eth({"from": node, "value": amount})
        self.books.stake[node] += amount

    @rule(node_i=node_i, amount=amounts)
    def unbond(self, node_i, amount):
        node, b, sm = self.nodes[node_i], self.books, self.s.stake
        remaining = b.stake[node] - amount
        if b.disputes[node] or amount > b.stake[node] or 0 < remaining < sm.min_stake():
            return
        tx = sm.request_unbond(amount, {"from": node})
        b.stake[node] -= amount
        b.unbonding[node] += amount
        b.unlock[node] = tx.events["UnbondRequested"]["unlock_at"]

    @rule(node_i=node_i)
    def withdraw(self, node_i):
        node, b = self.nodes[node_i], self.books
        if not b.unbonding[node] or b.disputes[node] or chain.time() < b.unlock[node] + 2:
            return
        self.s.stake.withdraw_stake({"from": node})
        b.unbonding[node] = 0

    # ---- challengers

    @rule(chal_i=chal_i, amount=amounts)
    def deposit(self, chal_i, amount):
        c = self.challengers[chal_i]
        self.s.stake.deposit_bond({"from": c, "value": amount % ETHER + 1})
        self.books.bond[c] += amount % ETHER + 1

    @rule(chal_i=chal_i, amount=amounts)
    def withdraw_bond(self, chal_i, amount):
        c = self.challengers[chal_i]
        amount = min(amount, self.books.bond[c])
        if amount:
            self.s.stake.withdraw_bond(amount, {"from": c})
            self.books.bond[c] -= amount

    @rule(chal_i=chal_i)
    def claim(self, chal_i):
        for who in (self.challengers[chal_i], self.nodes[chal_i], self.treasury):
            if self.books.claimable[who]:
                self.s.stake.claim({"from": who})
                self.books.claimable[who] = 0

    # ---- games

    @rule(node_i=node_i, chal_i=chal_i)
    def challenge(self, node_i, chal_i):
        node, c, b = self.nodes[node_i], self.challengers[chal_i], self.books
        bond = self.s.params.challenge_bond
        if b.stake[node] < self.s.stake.min_stake() or b.bond[c] < bond:
            return
        self.job += 1
        batch_id, batch, _ = post(self.s, self.coordinator, [make_leaf(self.trace, node, self.model_id,
                                                                       self.s.rollup, job=self.job)])
        tx = self.s.game.challenge(*batch.challenge_args(batch_id, 0, PROGRAM_HEADER), {"from": c})
        self.games.append((tx.return_value, node, c))
        b.bond[c] -= bond
        b.locked[c] += bond
        b.disputes[node] += 1

    @precondition(lambda self: self.games)
    @rule(node_wins=st.booleans())
    def resolve(self, node_wins):
        gid, node, c = self.games.pop(0)
        game, t, b, bond = self.s.game, self.trace, self.books, self.s.params.challenge_bond
        # A node whose clock already ran out (a long sleep) can only lose.
        node_wins = node_wins and game.time_left(gid)[0] > 10
        if node_wins:  # the node answers; the challenger then lets its clock run out
            game.open_trace(gid, t.state_root(t.n), t.state_proof(t.n, t.n), {"from": node})
            points = bisection.dissection_points(0, t.n, self.s.params.arity)
            game.bisect(gid, [t.state_root(p) for p in points], {"from": node})
        # A game opened behind others has a longer node clock (queued traces).
        chain.sleep(max(game.time_left(gid)) + 1)
        game.claim_timeout(gid, {"from": self.treasury})
        b.disputes[node] -= 1
        b.locked[c] -= bond
        if node_wins:
            b.claimable[node] += bond
        else:
            b.bond[c] += bond
            slashed = b.stake[node] + b.unbonding[node]
            reward = slashed * self.s.params.challenger_reward_bps // 10_000
            b.claimable[c] += reward
            b.claimable[self.treasury] += slashed - reward
            b.stake[node] = b.unbonding[node] = 0

    @rule(seconds=st.integers(1, 2000))
    def sleep(self, seconds):
        chain.sleep(seconds)
        chain.mine()  # so views (time_left) see the new time

    @invariant()
    def books_balance(self):
        self.books.check()


@pytest.mark.slow
def test_stake_and_bond_accounting(system, staked, nodes, challengers, treasury, model_id, honest_trace, coordinator):
    Accounting.fixtures = dict(s=system, nodes=nodes, challengers=challengers, treasury=treasury,
                               model_id=model_id, trace=honest_trace, coordinator=coordinator)
    chain.snapshot()
    run_state_machine_as_test(Accounting, settings=settings(
        max_examples=20, stateful_step_count=15, deadline=None, derandomize=True, database=None,
        phases=[Phase.generate],  # shrinking on a chain takes minutes; failures print their steps anyway
    ))
