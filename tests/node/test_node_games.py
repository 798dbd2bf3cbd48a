"""The defender against the real contracts on anvil, in-process: an honest
node wins a game it is right about (never slashed); each dishonest behaviour
of node/dishonest.py ends with the node slashed, against the real challenger
service (or, for a correct leaf, a challenger playing the pure player)."""

import logging

import pytest

from challenger.chain import Chain
from challenger.executors import ProgramExecutor
from challenger.metrics import Metrics as ChallengerMetrics
from challenger.sampler import Sampler
from challenger.service import Challenger
from challenger.store import OPEN as C_OPEN
from challenger.store import Store as ChallengerStore
from node import dishonest
from node.defender import Strategy
from node.store import LOST, OPEN, WON
from opinfer.chain.sender import TxSender
from opinfer.trace import player
from tests.node.kit import INVALID, POSTED, STAKE, Griefer, Net


@pytest.fixture(scope="module")
def net():
    n = Net.start()
    n.stake("n1")  # the honest node
    yield n
    n.stop()


def metric(metrics, name, label=None):
    total = 0.0
    for line in metrics.render().decode().splitlines():
        if line.startswith("#"):
            continue
        if line.split("{")[0].split(" ")[0] in (f"opinfer_node_{name}_total", f"opinfer_node_{name}"):
            if label is None or label in line:
                total += float(line.split()[-1])
    return total


def make_challenger(net, tmp_path):
    chain = Chain(net.w3, TxSender(net.w3, net.keys["challenger"]), net.rollup)
    return Challenger(chain, ChallengerStore(tmp_path / "challenger.db"), {"toy-dot": ProgramExecutor(net.program)},
                      Sampler(b"k" * 32, 1.0), ChallengerMetrics(), logging.getLogger("test.node.challenger"),
                      bond_top_up=10**18, start_block=net.w3.eth.block_number + 1)


def test_honest_node_wins_against_a_wrong_challenger_and_is_never_slashed(net, tmp_path):
    node = net.node("n1")
    defender = net.defender("n1", tmp_path, node=node)
    leaves = [net.execute(node, s) for s in range(3)]
    c = make_challenger(net, tmp_path)
    batch_id = net.post(leaves)
    # the real challenger re-executes everything and disputes nothing
    c.tick()
    assert c.store.disputes() == []
    griefer = Griefer(net)
    gid = griefer.challenge(leaves, batch_id, 1)
    for _ in range(60):
        defender.tick()
        if griefer.state(gid)["status"] != player.ACTIVE:
            break
        griefer.respond(gid)
    defender.tick()
    g = griefer.state(gid)
    assert g["status"] == player.NODE_WON
    assert g["node_clock"] > net.params.clock_budget // 2  # answered well inside its clock
    (game,) = defender.store.games()
    assert (game.game_id, game.status, game.outcome) == (gid, "over", WON)
    assert net.slashable("n1") == STAKE
    assert net.leaf_status(batch_id, 1) == POSTED
    # the griefer's bond went to the node
    assert net.c["StakeManager"].functions.claimable(net.addr["n1"]).call() == net.params.challenge_bond
    assert metric(defender.metrics, "games", 'outcome="won"') == 1
    assert metric(defender.metrics, "moves", 'function="step"') == 1  # it ran the one-step itself
    claims = defender.store.claims(gid)
    assert f"S{net.program.num_ops}" in claims and any(k.startswith("T") for k in claims)


def test_the_defender_refuses_to_contradict_itself(net, tmp_path):
    net.stake("n2")
    node = net.node("n2")
    defender = net.defender("n2", tmp_path, node=node)
    leaves = [net.execute(node, 10)]
    batch_id = net.post(leaves)
    griefer = Griefer(net)
    gid = griefer.challenge(leaves, batch_id, 0)
    defender.tick()  # open_trace: the final state root is recorded before it is sent
    (key,) = [k for k in defender.store.claims(gid) if k.startswith("S")]
    # a store that says otherwise (e.g. a trace rebuilt from another program) blocks the move
    defender.store._q("UPDATE claims SET value = ? WHERE game_id = ? AND key = ?", ("00" * 32, gid, key))
    griefer.respond(gid)
    defender.store._q("DELETE FROM claims WHERE game_id = ? AND key != ?", (gid, key))
    g_before = griefer.state(gid)
    before = metric(defender.metrics, "defender_errors", 'stage="inconsistent"')
    # the next node move is a bisect: it publishes no S{num_ops}, so it goes through;
    # force a clash on a dissection point instead
    from opinfer.trace import bisection

    points = bisection.dissection_points(g_before["lo"], g_before["hi"], net.d.params.arity)
    defender.store._q("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (gid, f"S{points[0]}", "11" * 32))
    defender.tick()
    assert metric(defender.metrics, "defender_errors", 'stage="inconsistent"') == before + 1
    assert griefer.state(gid)["phase"] == g_before["phase"]  # nothing was sent


def run_with_challenger(net, c, defender, rounds=80):
    for _ in range(rounds):
        c.tick()
        defender.tick()
        if not c.store.disputes(C_OPEN) and c.store.disputes():
            return
    raise AssertionError("game did not end")


@pytest.mark.parametrize("behaviour", ["wrong-output", "deep-element", "silent", "late"])
def test_a_lying_node_is_slashed_by_the_challenger(net, tmp_path, behaviour):
    role = {"wrong-output": "n3", "deep-element": "n4", "silent": "n5", "late": "n6"}[behaviour]
    net.stake(role)
    strategy = dishonest.BEHAVIOURS[behaviour]()
    node = net.node(role, dishonest.dishonest_node(strategy))
    defender = net.defender(role, tmp_path, strategy=strategy, node=node)
    honest = net.node("n1")
    leaves = [net.execute(honest, 40), net.execute(node, 41), net.execute(honest, 42)]
    # the lie is in the signed output root, and the defender commits to the same trace
    assert leaves[1].output_root == strategy.trace(net.program, __import__(
        "opinfer.semantics.jobinput", fromlist=["JobInput"]).JobInput.from_bytes(leaves[1].input)).output_root
    c = make_challenger(net, tmp_path)
    batch_id = net.post(leaves)
    if behaviour in ("silent", "late"):
        c.tick()
        c.tick()
        defender.tick()
        (d,) = c.store.disputes()
        assert d.status == C_OPEN and defender.store.games(OPEN)[0].moves == 0  # it never answered
        net.time_travel(net.params.clock_budget + 1)
        defender.tick()  # "late": answers now, after its clock; the contract refuses it
    run_with_challenger(net, c, defender)
    (d,) = c.store.disputes()
    g = c.chain.game(d.game_id)
    assert g["status"] == player.CHALLENGER_WON
    if behaviour == "deep-element":
        # bisected down to the wrong element, in a tensor before the output
        assert g["phase"] == player.STEP and g["hi"] < net.program.num_ops
    defender.tick()
    (game,) = defender.store.games()
    assert game.outcome == LOST
    assert net.slashable(role) == 0
    assert net.leaf_status(batch_id, 1) == INVALID
    assert net.leaf_status(batch_id, 0) == POSTED and net.leaf_status(batch_id, 2) == POSTED
    assert net.slashable("n1") == STAKE  # the honest node is never slashed
    if behaviour == "late":
        assert metric(defender.metrics, "defender_errors", 'stage="move"') >= 1


def test_inconsistent_bisection_on_a_correct_output_is_slashed(net, tmp_path):
    net.stake("n7")
    strategy = dishonest.Inconsistent()
    node = net.node("n7", dishonest.dishonest_node(strategy))
    defender = net.defender("n7", tmp_path, strategy=strategy, node=node)
    leaves = [net.execute(node, 50)]
    assert leaves[0].output_root == net.execute(net.node("n1"), 50).output_root  # a correct output
    batch_id = net.post(leaves)
    from opinfer.semantics.jobinput import JobInput
    from opinfer.trace.state import Trace

    # a challenger with the honest trace disputes it (it would lose against an honest defence)
    griefer = Griefer(net)
    gid = griefer.challenge(leaves, batch_id, 0, trace=Trace.of(net.program, JobInput.from_bytes(leaves[0].input)))
    for _ in range(12):
        defender.tick()
        griefer.respond(gid)
    g = griefer.state(gid)
    assert g["status"] == player.ACTIVE and g["phase"] == player.TENSOR  # stuck: no honest tensor fits its claim
    net.time_travel(net.params.clock_budget + 1)
    griefer.client.send(player.Move("claim_timeout", (gid,)))
    defender.tick()
    assert griefer.state(gid)["status"] == player.CHALLENGER_WON
    assert defender.store.games()[0].outcome == LOST
    assert net.slashable("n7") == 0 and net.slashable("n1") == STAKE


# ---------------------------------------------------------------- clock griefing (issue 14, point 3)

class SlowTraces(Strategy):
    """The honest node whose trace of every job takes `build_s` seconds to build,
    as a long job's does (docs/protocol.md: about 205 s for a 1,024-position
    SmolLM2 job); the toy trace itself takes a millisecond. Counts builds and
    how many ran at once (the defender's workers stand for its cores)."""

    def __init__(self, build_s: float):
        import threading

        self.build_s, self.builds, self.running, self.most = build_s, 0, 0, 0
        self._lock = threading.Lock()

    def trace(self, program, job):
        import time

        with self._lock:
            self.builds += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.build_s)
            return super().trace(program, job)
        finally:
            with self._lock:
                self.running -= 1


GRIEF_GAMES, BUILD_S, CLOCK_S, TRACE_BUDGET_S = 5, 4.0, 20, 5


@pytest.fixture(scope="module")
def short_net():
    """Clocks short enough that a trace build is a large part of one (as 205 s is of 300 s)."""
    from opinfer.chain.deploy import ProtocolParams

    n = Net.start(params=ProtocolParams(challenge_window=600, clock_budget=CLOCK_S, trace_budget=TRACE_BUDGET_S))
    n.stake("n1")
    yield n
    n.stop()


def test_concurrent_challenges_of_long_jobs_are_all_won_in_time(short_net, tmp_path):
    """A griefer challenges five of an honest node's long jobs at once. Before: the defender built
    traces one at a time inside its pass and kept four in memory, so every pass rebuilt them all and
    the node lost every game on time. Now every build starts at challenge time, earliest deadline
    first on two workers, ready games move while others build, and traces are kept on disk: a
    restarted defender loads them instead of rebuilding."""
    import time

    net = short_net
    slow = SlowTraces(BUILD_S)
    node = net.node("n1")
    leaves = [net.execute(node, 100 + s) for s in range(GRIEF_GAMES)]
    batch_id = net.post(leaves)
    defender = net.defender("n1", tmp_path, strategy=slow, node=node)
    defender.tick()  # the cursor is past the batch: it sees only games
    griefer = Griefer(net)
    gids = [griefer.challenge(leaves, batch_id, i) for i in range(GRIEF_GAMES)]
    restarted = False
    started = time.monotonic()
    while time.monotonic() - started < 120:
        defender.tick()
        states = {gid: griefer.state(gid) for gid in gids}
        if all(g["status"] != player.ACTIVE for g in states.values()):
            break
        now = net.w3.eth.get_block("latest")["timestamp"]
        for gid, g in states.items():
            if g["status"] != player.ACTIVE:
                continue
            if g["phase"] in player.NODE_PHASES:
                if now - g["last_move_at"] > g["node_clock"]:
                    griefer.client.send(player.Move("claim_timeout", (gid,)))  # the griefer's prize
            else:
                griefer.respond(gid)
        if not restarted and slow.builds == GRIEF_GAMES and all(
                defender.store.claims(gid) for gid in gids):
            # Killed and restarted mid-game: the traces come back from disk, nothing is rebuilt.
            defender = net.defender("n1", tmp_path, strategy=slow, node=node)
            defender.store.cursor = net.w3.eth.block_number
            restarted = True
    outcomes = {gid: griefer.state(gid)["status"] for gid in gids}
    assert outcomes == {gid: player.NODE_WON for gid in gids}
    assert net.slashable("n1") == STAKE
    assert slow.most == 2 and restarted
    assert slow.builds == GRIEF_GAMES                      # one build per game, none after the restart
    assert metric(defender.metrics, "dispute_traces", 'how="loaded"') >= 1


def test_a_game_over_a_batch_and_challenge_sent_through_contracts_is_defended(net, tmp_path):
    """Issue 14, point 6 (the node's side): the job input of a disputed leaf was read from top-level
    calldata only, so a batch posted and a challenge sent through contract wallets left the node
    unable to defend (its scan failed on every pass and it lost on time)."""
    from opinfer.chain import artifacts
    from opinfer.chain.deploy import contract
    from web3.logs import DISCARD

    net.stake("n8")
    node = net.node("n8")
    defender = net.defender("n8", tmp_path, node=node)
    leaves = [net.execute(node, 60), net.execute(node, 61)]
    game = net.c["DisputeGame"]
    batch_id = net.post_via(net.forwarder("coordinator"), leaves)
    # the griefer challenges through its own contract wallet (which holds the bond)
    griefer = TxSender(net.w3, net.keys["griefer"])   # a fresh nonce (other tests' griefers share the key)
    art = artifacts.load("Forwarder")
    proxy = contract(net.w3, "Forwarder", griefer.deploy(art.abi, art.bytecode), art.path.parent)
    sm = net.c["StakeManager"]
    griefer.call(proxy.functions.forward(sm.address, sm.encode_abi("deposit_bond", args=[])),
                                value=net.params.challenge_bond)
    args = net.batch(leaves).challenge_args(batch_id, 1, net.program.model_header())
    receipt = griefer.call(proxy.functions.forward(game.address, game.encode_abi("challenge", args=args)))
    gid = game.events.GameStarted().process_receipt(receipt, errors=DISCARD)[0]["args"]["game_id"]
    defender.tick()
    (stored,) = defender.store.games(OPEN)
    assert stored.game_id == gid and stored.input == leaves[1].input
    assert defender.store.claims(gid)  # it has moved (open_trace)
