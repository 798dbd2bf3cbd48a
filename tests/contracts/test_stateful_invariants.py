"""Hostile-input property tests of the whole contract system (issue 8).

A hypothesis state machine drives random interleavings of stakes, unbonds,
withdrawals, bond deposits and withdrawals, batch posts (honest and cheating
leaves), challenges (by honest challengers and by griefers), game moves
(honest, consistently cheating, well-formed but inconsistent, silent),
timeouts, voids, finalizations and claims through the real contracts on anvil.

Actors:
  * nodes[0..2] may sign honest leaves or cheating ones (a corrupted trace);
    a node is honest as long as it never signed a wrong output.
  * challengers[0..1] are honest: they dispute only wrong leaves and play
    their honest trace.
  * griefers (accounts 4..7, sybils of one attacker) dispute honest leaves
    and play a wrong trace or go silent.
  * Honest parties are live: before time passes (`sleep`) every honest party
    whose turn it is makes its move; dishonest parties may stall.

Invariants after every step:
  * the StakeManager's ETH balance equals its internal accounting (stake +
    unbonding + free bond + locked bond + claimable), which equals a Python
    model of every bucket, and equals deposits minus payouts; the other
    contracts hold no ETH;
  * no double payout: every resolution credits exactly once (the model), a
    second claim reverts, a finished game accepts no ending;
  * no leaf proven invalid is ever final; no honest leaf is ever invalid;
  * no honest node is ever slashed, no honest challenger ever loses a game;
  * stake cannot be withdrawn before its unlock time nor with a dispute open.
At the end of each example all games are played out (honest parties live,
the rest timed out) and every cheating leaf that an honest challenger
disputed is invalid and its node slashed of at least the minimum stake.

Issue 14 adds self-challenges (a node's sock puppet disputes one of the
node's own leaves and the node throws the game, to win the reward back),
re-posted leaves (the same signed leaf in a later batch) and concurrent
challenges of one node (several griefers at once). The Python model applies
the reward rule (escrow to the earliest-opened game against the node that
ends in fraud, held while an earlier game is active) and the queued node
clock (clock_budget + open games x trace_budget), and must match the chain
bucket by bucket; a sock puppet is never paid while an honest challenger's
earlier game against the same node ends in fraud.

Deterministic tests below cover griefing by many sybil challenges and the
race between a last-second challenge and a finalize.
"""

from __future__ import annotations

import random

import brownie
import pytest
from brownie import accounts, chain, web3
from brownie.exceptions import VirtualMachineError
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from conftest import (ACTIVE, CHALLENGER_WON, NODE_WON, PROGRAM_HEADER, VOID, Driver, corrupted_trace, game_state,
                      make_leaf, post)
from opinfer.trace import bisection, player

ETHER = 10**18
STATUS_POSTED, STATUS_DISPUTED, STATUS_FINAL, STATUS_INVALID = 1, 2, 3, 4
BPS = 10_000
# (position, row, col) of the corrupted element of each cheating trace.
CHEATS = [(1, 0, 5), (1, 0, 33), (3, 0, 9), (4, 0, 2)]
NODE_STRATEGIES = ("consistent", "mixed", "silent")


@pytest.fixture(scope="module")
def traces(program, job_input, honest_trace):
    bad = [corrupted_trace(program, job_input, p, r, c, delta=50) for p, r, c in CHEATS]
    # The griefers' (wrong) view of honest leaves: tensor 2 feeds no later op, so
    # its output agrees with the honest one and only its state roots differ.
    wrong = corrupted_trace(program, job_input, 2, 0, 7)
    assert all(t.output_root != honest_trace.output_root for t in bad)
    assert wrong.state_root(wrong.n) != honest_trace.state_root(honest_trace.n)
    return {"honest": honest_trace, "bad": bad, "wrong": wrong}


@pytest.fixture(scope="module")
def griefers(deployer, system, staked):
    out = list(accounts[4:8])
    for g in out[1:]:  # accounts[4] got its bond from `staked`
        system.stake.deposit_bond({"from": g, "value": 1 * ETHER})
    return out


@pytest.fixture(scope="module")
def sock(system, staked):
    """The nodes' sock puppet: challenges its own node's leaves to win the reward back."""
    system.stake.deposit_bond({"from": accounts[8], "value": 1 * ETHER})
    return accounts[8]


# ---------------------------------------------------------------- model

class LeafRec:
    def __init__(self, batch_id, index, batch, node, trace, bad, deadline, posted_at):
        self.batch_id, self.index, self.batch, self.node = batch_id, index, batch, node
        self.trace, self.bad, self.deadline, self.posted_at = trace, bad, deadline, posted_at
        self.challenged_by: set = set()
        self.honestly_challenged = False
        self.sacrificed = False  # an honest leaf its own node threw in a self-challenge
        self.proven = False  # a game on it ended in fraud (DisputeGame.fraud_proven)


class GameRec:
    def __init__(self, gid, leaf, challenger, driver, node_strategy, chal_silent, seed):
        self.gid, self.leaf, self.challenger, self.driver = gid, leaf, challenger, driver
        self.node_strategy, self.chal_silent = node_strategy, chal_silent
        self.rng = random.Random(seed)
        self.honest_side = "node" if not leaf.bad else "challenger"
        self.self_game = False  # the node's sock puppet challenged: nobody honest plays


class Books:
    """Every StakeManager bucket, predicted in Python."""

    def __init__(self, sm, people):
        self.sm, self.people = sm, people
        self.stake = {p: sm.stake(p) for p in people}
        self.unbonding = {p: sm.unbonding(p) for p in people}
        self.unlock = {p: sm.unlock_at(p) for p in people}
        self.bond = {p: sm.bond(p) for p in people}
        self.locked = {p: sm.locked_bond(p) for p in people}
        self.claimable = {p: sm.claimable(p) for p in people}
        self.disputes = {p: sm.open_disputes(p) for p in people}
        self.escrow = {p: sm.reward_escrow(p) for p in people}
        self.held = sm.balance()  # deposits minus payouts since the start
        # The reward rule: active game ids per node (opening order) and the game holding its escrow.
        self.active: dict = {p: [] for p in people}
        self.holder: dict = {p: None for p in people}

    def owed(self) -> int:
        return sum(sum(d.values()) for d in (self.stake, self.unbonding, self.bond, self.locked, self.claimable,
                                             self.escrow))


def now() -> int:
    """A lower bound on the next block's timestamp."""
    return max(chain.time(), chain[-1].timestamp + 1)


class Protocol(RuleBasedStateMachine):
    fixtures: dict = {}
    stats: dict = {}

    def __init__(self):
        super().__init__()
        chain.revert()  # back to the snapshot taken before the run
        for name, value in self.fixtures.items():
            setattr(self, name, value)
        self.sm, self.game, self.rollup = self.s.stake, self.s.game, self.s.rollup
        self.p = self.s.params
        self.min_stake = self.sm.min_stake()
        # challengers[2] is griefers[0]: only the first two challengers are honest.
        self.people = list(self.nodes) + list(self.challengers[:2]) + list(self.griefers) + [self.sock, self.treasury]
        self.books = Books(self.sm, self.people)
        self.leaves: list[LeafRec] = []
        self.batches: dict[int, int] = {}  # batch id -> deadline
        self.finalized: set = set()
        self.games: list[GameRec] = []  # active
        self.ended: list[GameRec] = []
        self.cheaters: set = set()
        self.slashes: list = []  # (node, amount, timestamp)
        self.releases: list = []  # (node, game record paid, the fraud-ending games it was chosen from)
        self.frauds: dict = {}  # node -> games that ended in fraud since its last release
        self.job = 1000

    # ------------------------------------------------------------ helpers

    def count(self, key, n=1):
        self.stats[key] = self.stats.get(key, 0) + n

    def honest_nodes(self):
        return [n for n in self.nodes if n not in self.cheaters]

    def sync(self):
        """Apply the ending of every game that ended (one tx ends at most one game's accounting)."""
        b = self.books
        for rec in list(self.games):
            g = player.game_state(self.game.games(rec.gid))
            if g["status"] == ACTIVE:
                continue
            self.games.remove(rec)
            self.ended.append(rec)
            node, c, bond = rec.leaf.node, rec.challenger, g["bond"]
            b.disputes[node] -= 1
            b.locked[c] -= bond
            fraud = g["status"] != NODE_WON
            if g["status"] == NODE_WON:
                assert rec.honest_side == "node" or rec.self_game, f"honest challenger lost game {rec.gid}"
                b.claimable[node] += bond
                self.count("node_won")
            elif g["status"] == CHALLENGER_WON:
                assert rec.leaf.bad or rec.self_game, f"honest node {node} slashed in game {rec.gid}"
                b.bond[c] += bond
                if rec.leaf.proven:  # 8a: a leaf already proven wrong is not slashed again
                    self.count("no_second_slash")
                else:
                    rec.leaf.proven = True
                    amount = b.stake[node] + b.unbonding[node]
                    reward = amount * self.p.challenger_reward_bps // BPS
                    b.escrow[node] += reward
                    b.claimable[self.treasury] += amount - reward
                    b.stake[node] = b.unbonding[node] = 0
                    self.slashes.append((node, amount, chain[-1].timestamp))
                self.count("challenger_won")
            else:
                assert g["status"] == VOID
                assert rec.leaf.proven and self.rollup.invalid(rec.leaf.batch_id, rec.leaf.index)
                b.bond[c] += bond
                self.count("voided")
            # The reward rule (point 4).
            b.active[node].remove(rec)
            if fraud:
                self.frauds.setdefault(node, []).append(rec)
            if fraud and (b.holder[node] is None or rec.gid < b.holder[node].gid):
                b.holder[node] = rec
            h = b.holder[node]
            if h is not None and all(a.gid > h.gid for a in b.active[node]):
                b.holder[node] = None
                if b.escrow[node]:
                    b.claimable[h.challenger] += b.escrow[node]
                    b.escrow[node] = 0
                    self.releases.append((node, h, self.frauds.pop(node, [])))
                    self.count("rewards_released")
                else:
                    self.frauds.pop(node, None)
            elif h is not None and b.escrow[node]:
                self.count("rewards_held_for_earlier_game")

    def send(self, rec: GameRec, move: player.Move, sender):
        rec.driver._send(move, sender)
        self.sync()

    def try_send(self, rec: GameRec, move: player.Move, sender) -> bool:
        try:
            self.send(rec, move, sender)
            return True
        except (VirtualMachineError, ValueError):
            return False

    def node_to_move(self, g) -> bool:
        return g["phase"] in player.NODE_PHASES

    def play_node(self, rec: GameRec) -> bool:
        """One node move by its strategy; False when it stalls."""
        g, d = rec.driver.state, rec.driver
        arity, bits = self.p.arity, d.bits
        node = rec.leaf.node
        if rec.node_strategy == "silent":
            return False
        if not rec.leaf.bad:  # an honest node's move never fails
            self.send(rec, player.node_move(rec.gid, g, d.node_trace, arity, bits), node)
            return True
        if rec.node_strategy == "consistent":
            return self.try_send(rec, player.node_move(rec.gid, g, d.node_trace, arity, bits), node)
        # "mixed": well-formed answers drawn from the honest and the cheating
        # trace at random, each move on its own; the game must still catch it.
        honest, bad = self.traces["honest"], d.node_trace
        if g["phase"] == player.BISECT:
            points = bisection.dissection_points(g["lo"], g["hi"], arity)
            claims = [rec.rng.choice((honest, bad)).state_root(p) for p in points]
            self.count("inconsistent_bisections")
            return self.try_send(rec, player.Move("bisect", (rec.gid, claims)), node)
        order = [bad, honest] if rec.rng.random() < 0.5 else [honest, bad]
        for trace in order:
            try:
                move = player.node_move(rec.gid, g, trace, arity, bits)
            except Exception:
                continue
            if self.try_send(rec, move, node):
                return True
        self.count("inconsistent_stalls")
        return False

    def play_challenger(self, rec: GameRec) -> bool:
        if rec.chal_silent:
            return False
        d = rec.driver
        move = player.challenger_move(rec.gid, d.state, d.chal_trace, self.p.arity, d.bits, d.revealed)
        if rec.honest_side == "challenger":  # an honest challenger's move never fails
            self.send(rec, move, rec.challenger)
            return True
        return self.try_send(rec, move, rec.challenger)  # a griefer may have run out of clock

    def play_one(self, rec: GameRec) -> bool:
        g = rec.driver.state
        if g["status"] != ACTIVE:
            return False
        if rec.self_game:  # the node throws it: silent, or its cheating trace against the sock's honest one
            if self.node_to_move(g):
                return self.play_node(rec)
            if g["phase"] == player.STEP:
                return self.try_send(rec, player.step_move(rec.gid, g, self.traces["honest"]), rec.challenger)
            return self.try_send(rec, player.challenger_move(rec.gid, g, rec.driver.chal_trace, self.p.arity,
                                                             rec.driver.bits, rec.driver.revealed), rec.challenger)
        if g["phase"] == player.STEP and rec.honest_side == "node" and rec.chal_silent:
            # The step runs on the challenger's clock but anyone may call it.
            # (After the griefer's clock ran out only claim_timeout ends it.)
            return self.try_send(rec, player.step_move(rec.gid, g, self.traces["honest"]), rec.leaf.node)
        return self.play_node(rec) if self.node_to_move(g) else self.play_challenger(rec)

    def honest_parties_move(self):
        """Liveness: every honest party whose turn it is moves now."""
        for rec in list(self.games):
            for _ in range(40):
                if rec not in self.games:
                    break
                g = rec.driver.state
                honest_turn = not rec.self_game and ((self.node_to_move(g) == (rec.honest_side == "node")) or (
                    g["phase"] == player.STEP and rec.honest_side == "node"))
                if not honest_turn or not self.play_one(rec):
                    break

    def pick_leaf(self, i, pred):
        candidates = [leaf for leaf in self.leaves if pred(leaf)]
        return candidates[i % len(candidates)] if candidates else None

    # ------------------------------------------------------------ nodes

    @rule(node_i=st.integers(0, 2), amount=st.integers(1, 3 * ETHER))
    def stake(self, node_i, amount):
        node, b = self.nodes[node_i], self.books
        if b.stake[node] + amount < self.min_stake:
            with brownie.reverts("StakeManager: below minimum stake"):
                self.sm.stake_eth({"from": node, "value": amount})
            return
        self.sm.stake_eth({"from": node, "value": amount})
        b.stake[node] += amount
        b.held += amount

    @rule(node_i=st.integers(0, 2), amount=st.integers(1, 3 * ETHER), whole=st.booleans())
    def unbond(self, node_i, amount, whole):
        node, b = self.nodes[node_i], self.books
        amount = b.stake[node] if whole and b.stake[node] else amount
        remaining = b.stake[node] - amount
        # Unbonding may start while disputes are open (issue 14, point 7); withdrawal waits for them.
        if b.disputes[node]:
            self.count("unbond_during_dispute")
        if amount > b.stake[node] or 0 < remaining < self.min_stake:
            with brownie.reverts():
                self.sm.request_unbond(amount, {"from": node})
            return
        tx = self.sm.request_unbond(amount, {"from": node})
        b.stake[node] -= amount
        b.unbonding[node] += amount
        b.unlock[node] = tx.events["UnbondRequested"]["unlock_at"]
        assert b.unlock[node] == tx.timestamp + self.sm.unbonding_delay()

    @rule(node_i=st.integers(0, 2))
    def withdraw(self, node_i):
        node, b = self.nodes[node_i], self.books
        if not b.unbonding[node]:
            return
        t = now()
        if b.disputes[node] or t + 3 < b.unlock[node]:
            with brownie.reverts():
                self.sm.withdraw_stake({"from": node})
            self.count("early_withdrawals_refused")
            return
        if t < b.unlock[node]:
            return  # too close to the unlock time to predict the block's timestamp
        before = node.balance()
        tx = self.sm.withdraw_stake({"from": node})
        assert tx.timestamp >= b.unlock[node]
        assert node.balance() == before + b.unbonding[node] - tx.gas_used * tx.gas_price
        b.held -= b.unbonding[node]
        b.unbonding[node] = 0
        self.count("withdrawals")

    # ------------------------------------------------------------ bonds and claims

    @rule(who=st.integers(0, 5), amount=st.integers(1, ETHER))
    def deposit_bond(self, who, amount):
        c = (list(self.challengers[:2]) + list(self.griefers))[who]
        self.sm.deposit_bond({"from": c, "value": amount})
        self.books.bond[c] += amount
        self.books.held += amount

    @rule(who=st.integers(0, 5), amount=st.integers(1, 2 * ETHER))
    def withdraw_bond(self, who, amount):
        c = (list(self.challengers[:2]) + list(self.griefers))[who]
        if amount > self.books.bond[c]:
            with brownie.reverts("StakeManager: amount above free bond"):
                self.sm.withdraw_bond(amount, {"from": c})
            return
        self.sm.withdraw_bond(amount, {"from": c})
        self.books.bond[c] -= amount
        self.books.held -= amount

    @rule(who=st.integers(0, 14))
    def claim(self, who):
        owed_to = [p for p in self.people if self.books.claimable[p]]
        acct = owed_to[who % len(owed_to)] if owed_to and who < 15 else self.people[who % len(self.people)]
        if who >= 15:  # teardown: this very account
            acct = self.people[who - 15]
        owed = self.books.claimable[acct]
        if not owed:
            with brownie.reverts("StakeManager: nothing to claim"):
                self.sm.claim({"from": acct})
            return
        tx = self.sm.claim({"from": acct})
        assert tx.events["Claimed"]["amount"] == owed
        self.books.claimable[acct] = 0
        self.books.held -= owed
        with brownie.reverts("StakeManager: nothing to claim"):  # no double payout
            self.sm.claim({"from": acct})
        self.count("claims")

    # ------------------------------------------------------------ batches

    def _postable(self, node):
        """ResultRollup._check_postable: True, the revert reason, or None when
        too close to the unlock to call (issue 14, points 7 and 10: an
        unbonding node's leaves are postable while their window closes
        before its unlock)."""
        b = self.books
        if b.stake[node] >= self.min_stake:
            return True
        if not b.unbonding[node]:
            return "ResultRollup: node not staked"
        margin = b.unlock[node] - self.p.challenge_window - now()
        if abs(margin) <= 3:
            return None
        return True if margin > 0 else "ResultRollup: node stake unlocks within the window"

    @rule(spec=st.lists(st.tuples(st.integers(0, 2), st.integers(-4, len(CHEATS) - 1)), min_size=1, max_size=3))
    def post_batch(self, spec):
        leaves, owners = [], []
        for node_i, cheat in spec:
            node = self.nodes[node_i]
            trace = self.traces["bad"][cheat] if cheat >= 0 else self.traces["honest"]
            self.job += 1
            leaves.append(make_leaf(trace, node, self.model_id, self.rollup, job=self.job))
            owners.append((node, trace, cheat >= 0))
        verdicts = [self._postable(n) for n, _, _ in owners]
        if None in verdicts:
            return  # a node's unlock is too close to predict the block's timestamp
        refused = [why for why in verdicts if why is not True]
        if refused:
            with brownie.reverts(refused[0]):
                post(self.s, self.coordinator, leaves)
            return
        batch_id, batch, tx = post(self.s, self.coordinator, leaves)
        deadline = tx.events["BatchPosted"]["deadline"]
        self.batches[batch_id] = deadline
        for i, (node, trace, bad) in enumerate(owners):
            self.leaves.append(LeafRec(batch_id, i, batch, node, trace, bad, deadline, tx.timestamp))
            if bad:
                self.cheaters.add(node)
        self.count("leaves", len(owners))
        self.count("cheating_leaves", sum(bad for _, _, bad in owners))

    @initialize(cheat=st.integers(0, len(CHEATS) - 1), node_i=st.integers(0, 2), chal_i=st.integers(0, 1),
                strategy=st.sampled_from(NODE_STRATEGIES), grief_i=st.integers(0, 3), silent=st.booleans(),
                seed=st.integers(0, 2**32))
    def first_games(self, cheat, node_i, chal_i, strategy, grief_i, silent, seed):
        """Every example starts with one honest and one cheating leaf posted,
        the cheat disputed by an honest challenger, the honest leaf by a griefer."""
        self.post_batch([((node_i + 1) % 3, -1), (node_i, cheat)])
        self.challenge_cheat(len(self.leaves) - 1, chal_i, strategy, seed)
        self.grief(len(self.leaves) - 2, grief_i, silent)
        # Both games start at once, each side by its strategy (the cheater's first).
        for rec in list(self.games):
            for _ in range(6):
                if rec not in self.games or not self.play_one(rec):
                    break
                self.count("moves")
        # The third node starts to leave: half its stake unbonds, and cannot be withdrawn yet.
        self.unbond((node_i + 2) % 3, self.books.stake[self.nodes[(node_i + 2) % 3]] // 2, False)
        self.withdraw((node_i + 2) % 3)

    @rule(i=st.integers(0, 50))
    def finalize(self, i):
        if not self.batches:
            return
        batch_id = sorted(self.batches)[i % len(self.batches)]
        deadline, t = self.batches[batch_id], now()
        if batch_id in self.finalized:
            with brownie.reverts("ResultRollup: already finalized"):
                self.rollup.finalize(batch_id, {"from": self.treasury})
        elif t + 5 <= deadline:
            with brownie.reverts("ResultRollup: challenge window open"):
                self.rollup.finalize(batch_id, {"from": self.treasury})
        elif t > deadline:
            tx = self.rollup.finalize(batch_id, {"from": self.treasury})
            assert tx.timestamp > deadline
            self.finalized.add(batch_id)
            self.count("finalized")

    # ------------------------------------------------------------ challenges

    def _challenge(self, leaf: LeafRec, challenger, chal_trace, node_strategy, chal_silent, seed, self_game=False):
        b, bond = self.books, self.p.challenge_bond
        t = now()
        args = leaf.batch.challenge_args(leaf.batch_id, leaf.index, PROGRAM_HEADER)
        if t > leaf.deadline:  # a late challenge cannot front-run the finalize
            with brownie.reverts("DisputeGame: challenge window closed"):
                self.game.challenge(*args, {"from": challenger})
            self.count("late_challenges_refused")
            return None
        if t + 5 > leaf.deadline:
            return None  # the block's timestamp may fall on either side
        if self.rollup.invalid(leaf.batch_id, leaf.index):
            with brownie.reverts("DisputeGame: leaf already invalid"):
                self.game.challenge(*args, {"from": challenger})
            return None
        if challenger in leaf.challenged_by:
            with brownie.reverts("DisputeGame: already challenged by caller"):
                self.game.challenge(*args, {"from": challenger})
            return None
        if b.bond[challenger] < bond:
            with brownie.reverts("StakeManager: insufficient free bond"):
                self.game.challenge(*args, {"from": challenger})
            return None
        tx = self.game.challenge(*args, {"from": challenger})
        gid = tx.return_value
        leaf.challenged_by.add(challenger)
        # Point 3: the node's clock covers the traces queued ahead of this one.
        queued = b.disputes[leaf.node]
        assert player.game_state(self.game.games(gid))["node_clock"] == self.p.clock_budget + queued * self.p.trace_budget
        if queued:
            self.count("queued_clocks")
        b.bond[challenger] -= bond
        b.locked[challenger] += bond
        b.disputes[leaf.node] += 1
        driver = Driver(self.s, gid, leaf.node, leaf.trace, challenger, chal_trace)
        rec = GameRec(gid, leaf, challenger, driver, node_strategy, chal_silent, seed)
        rec.self_game = self_game
        b.active[leaf.node].append(rec)
        self.games.append(rec)
        assert self.rollup.leaf_status(leaf.batch_id, leaf.index) == STATUS_DISPUTED
        return rec

    @rule(i=st.integers(0, 50), chal_i=st.integers(0, 1), strategy=st.sampled_from(NODE_STRATEGIES),
          seed=st.integers(0, 2**32))
    def challenge_cheat(self, i, chal_i, strategy, seed):
        leaf = self.pick_leaf(i, lambda leaf: leaf.bad)
        if leaf is None:
            return
        rec = self._challenge(leaf, self.challengers[chal_i], self.traces["honest"], strategy, False, seed)
        if rec is not None:
            leaf.honestly_challenged = True
            self.count("honest_challenges")

    @rule(i=st.integers(0, 50), grief_i=st.integers(0, 3), silent=st.booleans())
    def grief(self, i, grief_i, silent):
        leaf = self.pick_leaf(i, lambda leaf: not leaf.bad)
        if leaf is None:
            return
        if self._challenge(leaf, self.griefers[grief_i], self.traces["wrong"], "consistent", silent, 0):
            self.count("griefing_challenges")

    @rule(i=st.integers(0, 50), n=st.integers(2, 4))
    def concurrent_griefs(self, i, n):
        """Several griefers at once on one honest node's leaves (point 3): each
        game's node clock covers the traces queued ahead of it."""
        leaf = self.pick_leaf(i, lambda leaf: not leaf.bad)
        if leaf is None:
            return
        mine = [x for x in self.leaves if x.node == leaf.node and not x.bad]
        for k in range(n):
            target = mine[(i + k) % len(mine)]
            if self._challenge(target, self.griefers[k], self.traces["wrong"], "consistent", k % 2 == 1, 0):
                self.count("griefing_challenges")

    @rule(i=st.integers(0, 50), seed=st.integers(0, 2**32))
    def self_challenge(self, i, seed):
        """Point 4: the node's sock puppet disputes one of the node's leaves (a
        lie, played out fast with the cheating trace, or an honest leaf, left
        to time out) to win the reward back before an honest game ends."""
        # Only leaves it can still dispute: a sock puppet aims, it does not draw blind.
        t = now()
        leaf = self.pick_leaf(i, lambda leaf: self.sock not in leaf.challenged_by and t + 5 <= leaf.deadline
                              and not self.rollup.invalid(leaf.batch_id, leaf.index))
        if leaf is None:
            return
        strategy = "consistent" if leaf.bad else "silent"
        rec = self._challenge(leaf, self.sock, self.traces["honest"], strategy, False, seed, self_game=True)
        if rec is None:
            return
        self.cheaters.add(leaf.node)  # throwing a game is cheating, whatever the leaf
        if not leaf.bad:
            leaf.sacrificed = True
        self.count("self_challenges")
        for _ in range(40):
            if rec not in self.games or not self.play_one(rec):
                break

    @rule(i=st.integers(0, 50))
    def repost(self, i):
        """The coordinator posts an already-posted signed leaf again. Accepted by
        design (issue 14 point 7: refusing duplicates would cost a fresh SSTORE per
        leaf); it is one more leaf to dispute, and unbonding can start whatever games
        it draws, so it cannot keep the node from leaving."""
        leaf = self.pick_leaf(i, lambda leaf: True)
        if leaf is None:
            return
        signed = leaf.batch.leaves[leaf.index]
        if self.books.stake[leaf.node] < self.min_stake:
            return
        batch_id, batch, tx = post(self.s, self.coordinator, [signed])
        deadline = tx.events["BatchPosted"]["deadline"]
        self.batches[batch_id] = deadline
        self.leaves.append(LeafRec(batch_id, 0, batch, leaf.node, leaf.trace, leaf.bad, deadline, tx.timestamp))
        self.count("reposts")

    # ------------------------------------------------------------ game moves and time

    @precondition(lambda self: self.games)
    @rule(i=st.integers(0, 50), moves=st.integers(1, 8))
    def move(self, i, moves):
        rec = self.games[i % len(self.games)]
        for _ in range(moves):
            if rec not in self.games or not self.play_one(rec):
                break
            self.count("moves")

    @rule(seconds=st.sampled_from([1, 30, 150, 310, 700, 1300]))
    def sleep(self, seconds):
        self.honest_parties_move()
        chain.sleep(seconds)
        chain.mine()

    @precondition(lambda self: self.games)
    @rule()
    def timeouts(self):
        for rec in list(self.games):
            g = rec.driver.state
            clock = g["node_clock"] if self.node_to_move(g) else g["challenger_clock"]
            if now() - g["last_move_at"] > clock:
                self.game.claim_timeout(rec.gid, {"from": self.treasury})
                self.sync()
                self.count("timeouts")
            elif now() + 5 < g["last_move_at"] + clock:
                with brownie.reverts("DisputeGame: clock not expired"):
                    self.game.claim_timeout(rec.gid, {"from": self.treasury})

    @precondition(lambda self: self.games)
    @rule()
    def void(self):
        for rec in list(self.games):
            if rec.leaf.proven:
                assert self.game.fraud_proven(rec.leaf.batch_id, rec.leaf.index)
                self.game.void_after_fraud(rec.gid, {"from": self.treasury})
                self.sync()
            else:
                with brownie.reverts("DisputeGame: leaf not invalid"):
                    self.game.void_after_fraud(rec.gid, {"from": self.treasury})

    @precondition(lambda self: self.ended)
    @rule(i=st.integers(0, 50))
    def replay_ending(self, i):
        """A finished game pays nothing twice."""
        rec = self.ended[i % len(self.ended)]
        with brownie.reverts("DisputeGame: game over"):
            self.game.claim_timeout(rec.gid, {"from": self.treasury})
        with brownie.reverts("DisputeGame: game over"):
            self.game.void_after_fraud(rec.gid, {"from": self.treasury})

    # ------------------------------------------------------------ invariants

    @invariant()
    def books_balance(self):
        sm, b = self.sm, self.books
        for p in self.people:
            assert (sm.stake(p), sm.unbonding(p), sm.bond(p), sm.locked_bond(p), sm.claimable(p), sm.open_disputes(p),
                    sm.reward_escrow(p)) \
                == (b.stake[p], b.unbonding[p], b.bond[p], b.locked[p], b.claimable[p], b.disputes[p], b.escrow[p]), p
        for node in self.nodes:
            assert self.game.open_against(node) == len(b.active[node])
            assert self.game.reward_game(node) == (b.holder[node].gid if b.holder[node] else 0)
        assert sm.balance() == b.owed() == b.held
        assert self.rollup.balance() == self.game.balance() == self.s.registry.balance() == 0

    @invariant()
    def leaves_consistent(self):
        for leaf in self.leaves:
            status = self.rollup.leaf_status(leaf.batch_id, leaf.index)
            if not leaf.bad and not leaf.sacrificed:
                assert status != STATUS_INVALID, "honest leaf invalidated"
            if self.rollup.invalid(leaf.batch_id, leaf.index):
                assert status == STATUS_INVALID  # never final, whatever finalize did
            if leaf.batch_id in self.finalized and status == STATUS_FINAL:
                assert not self.rollup.invalid(leaf.batch_id, leaf.index)
                assert self.rollup.open_games(leaf.batch_id, leaf.index) == 0

    @invariant()
    def honest_never_slashed(self):
        slashed = {node for node, _, _ in self.slashes}
        assert not slashed & set(self.honest_nodes())

    @invariant()
    def sock_never_outruns_an_earlier_honest_game(self):
        """Point 4: a reward paid to the sock puppet had no earlier honest game
        against the node that ended in fraud."""
        for node, h, frauds in self.releases:
            assert h.gid == min(r.gid for r in frauds)  # the earliest game that proved fraud is paid
            if h.challenger == self.sock:
                assert not [r for r in frauds if not r.self_game], "sock paid ahead of an honest game"

    # ------------------------------------------------------------ end of an example

    def teardown(self):
        for _ in range(8):  # play everything out: honest parties live, the rest time out
            self.honest_parties_move()
            if not self.games:
                break
            chain.sleep(max(max(self.game.time_left(rec.gid)) for rec in self.games) + 1)
            chain.mine()
            for rec in list(self.games):
                if rec.leaf.proven:
                    self.game.void_after_fraud(rec.gid, {"from": self.treasury})
                else:
                    try:
                        self.game.claim_timeout(rec.gid, {"from": self.treasury})
                        self.count("timeouts")
                    except VirtualMachineError:
                        continue
                self.sync()
        assert not self.games, "a game did not end within both clocks"
        self.books_balance()
        for leaf in self.leaves:
            if leaf.honestly_challenged:
                assert self.rollup.leaf_status(leaf.batch_id, leaf.index) == STATUS_INVALID
                after = sum(a for n, a, t in self.slashes if n == leaf.node and t >= leaf.posted_at)
                assert after >= self.min_stake, "a challenged cheater kept its stake"
                self.count("cheaters_caught")
        # Settle: every batch finalizes, everyone is paid once, nothing is left owed.
        chain.sleep(self.p.challenge_window + 1)
        chain.mine()
        for batch_id in sorted(set(self.batches) - self.finalized):
            self.finalize(batch_id - min(self.batches))
        assert self.finalized == set(self.batches)
        chain.sleep(self.sm.unbonding_delay())
        chain.mine()
        for node_i in range(3):
            self.withdraw(node_i)
        for acct in self.people:
            if self.books.claimable[acct]:
                self.claim(self.people.index(acct) + 15)
        self.leaves_consistent()
        self.books_balance()
        assert self.sm.balance() == sum(sum(d.values()) for d in (self.books.stake, self.books.unbonding,
                                                                  self.books.bond))
        self.count("examples")


@pytest.mark.slow
def test_random_interleavings_keep_invariants(system, staked, griefers, sock, nodes, challengers, treasury, model_id,
                                              traces, coordinator):
    Protocol.fixtures = dict(s=system, nodes=nodes, challengers=challengers, griefers=griefers, treasury=treasury,
                             model_id=model_id, traces=traces, coordinator=coordinator, sock=sock)
    Protocol.stats = {}
    chain.snapshot()
    run_state_machine_as_test(Protocol, settings=settings(
        max_examples=12, stateful_step_count=30, deadline=None, derandomize=True, database=None,
        phases=[Phase.generate],  # shrinking on a chain takes minutes; failures print their steps anyway
    ))
    stats = Protocol.stats
    print("\nstateful coverage:", dict(sorted(stats.items())))
    # The run must actually exercise the hostile paths, not skip them.
    for key in ("honest_challenges", "griefing_challenges", "challenger_won", "node_won", "claims", "finalized",
                "early_withdrawals_refused", "withdrawals", "cheaters_caught", "timeouts", "moves",
                "inconsistent_bisections", "self_challenges", "queued_clocks", "rewards_released"):
        assert stats.get(key, 0) > 0, f"no {key} in the run: {stats}"


# ---------------------------------------------------------------- deterministic adversaries

def test_griefing_with_many_challenges_costs_the_griefer(system, staked, griefers, coordinator, nodes, model_id,
                                                         traces):
    """Sybil griefers dispute one honest leaf: each loses its bond to the node
    (by a played-out game or by going silent), the rest of the batch
    finalizes on time, the griefed leaf finalizes when its games end."""
    honest, wrong = traces["honest"], traces["wrong"]
    node, bond = nodes[0], system.params.challenge_bond
    leaves = [make_leaf(honest, node, model_id, system.rollup, job=1), make_leaf(honest, nodes[1], model_id,
                                                                                 system.rollup, job=2)]
    batch_id, batch, _ = post(system, coordinator, leaves)
    free = {g: system.stake.bond(g) for g in griefers}
    gids = [system.game.challenge(*batch.challenge_args(batch_id, 0, PROGRAM_HEADER), {"from": g}).return_value
            for g in griefers]
    assert system.rollup.open_games(batch_id, 0) == len(griefers)
    # The games cannot lock the node in (issue 14, point 7): it may start unbonding now;
    # only the withdrawal waits for them, and the griefers' money is locked meanwhile.
    system.stake.request_unbond(1, {"from": node})
    assert system.stake.unbonding(node) == 1
    # Two griefers play their wrong trace to the end; two go silent.
    for gid, g in zip(gids[:2], griefers[:2]):
        d = Driver(system, gid, node, honest, g, wrong)
        assert d.play()["status"] == NODE_WON
        node_gas = sum(tx.gas_used for tx in d.txs if tx.sender == node)
        grief_gas = sum(tx.gas_used for tx in d.txs if tx.sender == g)
        # What a played-out griefing game costs the node (toy program: about 0.64M
        # gas), against the 0.1 ETH bond it wins: below 2M gas keeps the bond ahead
        # at any gas price under 50 gwei.
        print(f"\ngriefing game {gid}: node gas {node_gas:,}, griefer gas {grief_gas:,} + bond {bond / 1e18} ETH")
        assert node_gas < 2_000_000
    for gid in gids[2:]:  # the node answers at once, up to the griefer's turn
        d = Driver(system, gid, node, honest, None, wrong)
        while d.state["phase"] in player.NODE_PHASES:
            d.node_move()
    chain.sleep(system.params.challenge_window + 1)
    chain.mine()
    system.rollup.finalize(batch_id, {"from": coordinator})
    assert system.rollup.leaf_status(batch_id, 1) == STATUS_FINAL  # the rest of the batch is not held up
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_DISPUTED
    chain.sleep(system.params.clock_budget + 1)
    chain.mine()
    for gid in gids[2:]:
        system.game.claim_timeout(gid, {"from": node})
        assert game_state(system.game, gid)["status"] == NODE_WON
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_FINAL
    assert system.stake.claimable(node) == len(griefers) * bond
    for g in griefers:
        assert system.stake.bond(g) == free[g] - bond and system.stake.locked_bond(g) == 0
    assert system.stake.slashable(node) == 2 * system.params.min_stake
    # The delay a griefer buys is bounded: one challenger clock plus what the node spent.
    assert system.game.max_game_duration() == 2 * system.params.clock_budget


def set_next_timestamp(t: int):
    web3.provider.make_request("evm_setNextBlockTimestamp", [t])


@pytest.mark.parametrize("cheating", [False, True])
def test_last_second_challenge_versus_finalize(system, staked, coordinator, nodes, challengers, model_id, traces,
                                               cheating):
    """Front-running a finalize: a challenge mined at the deadline wins the race
    (the batch finalizes but the leaf stays disputed until its game ends); one
    mined a second later reverts, and finalize succeeds."""
    honest = traces["honest"]
    leaf_trace = traces["bad"][3] if cheating else honest
    chal_trace = honest if cheating else traces["wrong"]
    node = nodes[2]
    leaves = [make_leaf(leaf_trace, node, model_id, system.rollup, job=7),
              make_leaf(honest, nodes[1], model_id, system.rollup, job=8)]
    batch_id, batch, tx = post(system, coordinator, leaves)
    deadline = tx.events["BatchPosted"]["deadline"]
    args = batch.challenge_args(batch_id, 0, PROGRAM_HEADER)
    chain.sleep(deadline - chain.time() - 20)
    chain.mine()
    forced = {"gas_limit": 6_000_000, "allow_revert": True}
    set_next_timestamp(deadline - 1)
    with brownie.reverts("ResultRollup: challenge window open"):
        system.rollup.finalize(batch_id, {"from": coordinator, **forced})
    set_next_timestamp(deadline)
    ctx = system.game.challenge(*args, {"from": challengers[0]})
    assert ctx.timestamp == deadline
    gid = ctx.return_value
    set_next_timestamp(deadline + 1)
    with brownie.reverts("DisputeGame: challenge window closed"):
        system.game.challenge(*args, {"from": challengers[1], **forced})
    ftx = system.rollup.finalize(batch_id, {"from": coordinator})
    assert ftx.timestamp > deadline
    assert system.rollup.leaf_status(batch_id, 0) == STATUS_DISPUTED
    assert system.rollup.leaf_status(batch_id, 1) == STATUS_FINAL
    end = Driver(system, gid, node, leaf_trace, challengers[0], chal_trace).play()
    if cheating:
        assert end["status"] == CHALLENGER_WON
        assert system.rollup.leaf_status(batch_id, 0) == STATUS_INVALID  # finalize did not save it
        assert system.stake.slashable(node) == 0
    else:
        assert end["status"] == NODE_WON
        assert system.rollup.leaf_status(batch_id, 0) == STATUS_FINAL


def test_withdrawal_cannot_outrun_a_dispute(system, staked, coordinator, nodes, challengers, model_id, traces):
    """A cheater that unbonds everything right after its leaf is posted is still
    slashable: the unlock comes after the deadline plus both clocks."""
    node, bad = nodes[2], traces["bad"][0]
    batch_id, batch, tx = post(system, coordinator, [make_leaf(bad, node, model_id, system.rollup, job=5)])
    deadline = tx.events["BatchPosted"]["deadline"]
    stake = system.stake.stake(node)
    unlock = system.stake.request_unbond(stake, {"from": node}).events["UnbondRequested"]["unlock_at"]
    assert unlock > deadline + system.game.max_game_duration()
    chain.sleep(deadline - chain.time() - 5)
    chain.mine()
    with brownie.reverts("StakeManager: still unbonding"):
        system.stake.withdraw_stake({"from": node})
    gid = system.game.challenge(*batch.challenge_args(batch_id, 0, PROGRAM_HEADER),
                                {"from": challengers[0]}).return_value
    # The cheater stalls until the last second of its clock, then stops.
    chain.sleep(system.params.clock_budget)
    chain.mine()
    with brownie.reverts():
        system.stake.withdraw_stake({"from": node})
    chain.sleep(2)
    chain.mine()
    system.game.claim_timeout(gid, {"from": challengers[0]})
    assert game_state(system.game, gid)["status"] == CHALLENGER_WON
    assert system.stake.slashable(node) == 0
    assert system.stake.claimable(challengers[0]) == stake * system.params.challenger_reward_bps // BPS
